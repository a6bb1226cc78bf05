package pcapng

// HeaderLen returns how many bytes at the start of an IPv4 packet are
// headers: the IPv4 header, and the TCP, UDP, SCTP (common) or ICMP header
// of a first fragment; for ICMP errors also the quoted IPv4 header and the
// 8 bytes after it that name the flow the error is about. It never exceeds
// len(pkt). Bytes that are not IPv4 count as one minimal IPv4 header.
func HeaderLen(pkt []byte) int {
	n := headerLen(pkt)
	return min(n, len(pkt))
}

func headerLen(pkt []byte) int {
	if len(pkt) < 20 || pkt[0]>>4 != 4 {
		return 20
	}
	ihl := max(int(pkt[0]&0x0f)*4, 20)
	if fragOff := (int(pkt[6])&0x1f)<<8 | int(pkt[7]); fragOff != 0 {
		return ihl // a later fragment carries no transport header
	}
	switch pkt[9] {
	case 6: // TCP
		if len(pkt) < ihl+13 {
			return ihl + 20
		}
		return ihl + max(int(pkt[ihl+12]>>4)*4, 20)
	case 17: // UDP
		return ihl + 8
	case 132: // SCTP common header
		return ihl + 12
	case 1: // ICMP
		if len(pkt) < ihl+1 {
			return ihl + 8
		}
		switch pkt[ihl] {
		case 3, 4, 5, 11, 12: // errors quote the offending packet's headers
			inner := ihl + 8
			if len(pkt) < inner+1 {
				return inner + 28
			}
			return inner + max(int(pkt[inner]&0x0f)*4, 20) + 8
		}
		return ihl + 8
	}
	return ihl
}

// Trim returns the part of a packet's captured bytes to keep: the first
// snaplen bytes, or with snaplen 0 the headers only (HeaderLen). It returns
// a sub-slice of pkt.
func Trim(pkt []byte, snaplen int) []byte {
	if snaplen > 0 {
		return pkt[:min(snaplen, len(pkt))]
	}
	return pkt[:HeaderLen(pkt)]
}
