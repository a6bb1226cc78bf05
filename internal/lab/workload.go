package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// listenSpec is one port an in-process server listens on.
type listenSpec struct {
	Protocol corev1.Protocol
	Port     int32
}

// server is the in-process workload of one pod or host: serve_hostname-like
// TCP and UDP listeners created inside its network namespace and answering
// with a fixed string.
type server struct {
	answer    string
	closers   []io.Closer
	wg        sync.WaitGroup
	closeOnce sync.Once

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

const (
	// tcpSniff is how long the TCP server waits for a request before it
	// answers anyway (clients like nc send nothing).
	tcpSniff = 200 * time.Millisecond
	// tcpConnDeadline bounds one served connection.
	tcpConnDeadline = 2 * time.Second
)

// startServer creates the listeners inside the namespace at nsPath and
// serves from goroutines until close is called.
func startServer(nsPath, answer string, ports []listenSpec) (*server, error) {
	s := &server{answer: answer, conns: map[net.Conn]struct{}{}}
	var tcp []net.Listener
	var udp []net.PacketConn
	err := inNetns(nsPath, func() error {
		for _, p := range ports {
			addr := net.JoinHostPort("0.0.0.0", strconv.Itoa(int(p.Port)))
			switch p.Protocol {
			case corev1.ProtocolTCP:
				ln, err := net.Listen("tcp4", addr)
				if err != nil {
					return fmt.Errorf("listen tcp %s: %w", addr, err)
				}
				tcp = append(tcp, ln)
				s.closers = append(s.closers, ln)
			case corev1.ProtocolUDP:
				pc, err := net.ListenPacket("udp4", addr)
				if err != nil {
					return fmt.Errorf("listen udp %s: %w", addr, err)
				}
				udp = append(udp, pc)
				s.closers = append(s.closers, pc)
			default:
				return fmt.Errorf("listen %s/%d: unsupported protocol", p.Protocol, p.Port)
			}
		}
		return nil
	})
	if err != nil {
		s.close()
		return nil, err
	}
	for _, ln := range tcp {
		s.wg.Add(1)
		go s.serveTCP(ln)
	}
	for _, pc := range udp {
		s.wg.Add(1)
		go s.serveUDP(pc)
	}
	return s, nil
}

func (s *server) serveTCP(ln net.Listener) {
	defer s.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			_ = c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			s.handleTCP(c)
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
	}
}

// handleTCP answers like serve_hostname: an HTTP request gets an HTTP
// response whose body is the answer; anything else (or nothing, after a
// short wait) gets the bare answer.
func (s *server) handleTCP(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(tcpConnDeadline))
	_ = c.SetReadDeadline(time.Now().Add(tcpSniff))
	buf := make([]byte, 1024)
	n, _ := c.Read(buf)
	_ = c.SetReadDeadline(time.Time{})
	body := s.answer + "\n"
	if isHTTPRequest(buf[:n]) {
		fmt.Fprintf(c, "HTTP/1.0 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
		return
	}
	_, _ = io.WriteString(c, body)
}

func isHTTPRequest(b []byte) bool {
	for _, m := range []string{"GET ", "HEAD ", "POST ", "PUT ", "DELETE ", "OPTIONS "} {
		if bytes.HasPrefix(b, []byte(m)) {
			return true
		}
	}
	return false
}

func (s *server) serveUDP(pc net.PacketConn) {
	defer s.wg.Done()
	buf := make([]byte, 2048)
	for {
		_, addr, err := pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		_, _ = pc.WriteTo([]byte(s.answer+"\n"), addr)
	}
}

// close stops the listeners and waits (bounded) for in-flight connections.
func (s *server) close() {
	s.closeOnce.Do(func() {
		for _, c := range s.closers {
			_ = c.Close()
		}
		s.mu.Lock()
		s.closed = true
		for c := range s.conns {
			_ = c.Close()
		}
		s.mu.Unlock()
		done := make(chan struct{})
		go func() {
			s.wg.Wait()
			close(done)
		}()
		ctx, cancel := context.WithTimeout(context.Background(), tcpConnDeadline+time.Second)
		defer cancel()
		select {
		case <-done:
		case <-ctx.Done():
		}
	})
}
