package tracer

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/svctrace/svctrace/internal/attach"
	"github.com/svctrace/svctrace/internal/meta"
	"github.com/svctrace/svctrace/internal/podnet"
	"golang.org/x/sys/unix"
)

// deviceRefresh is how often the backend pods' interfaces are looked for
// again while the endpoints stay the same (a pod recreated with its old
// address, a pod whose namespace appeared after its endpoint).
const deviceRefresh = 5 * time.Second

// backendAddrs are the filter's endpoint addresses (current and former).
func backendAddrs(entries []attach.FilterEntry) []netip.Addr {
	var out []netip.Addr
	for _, e := range entries {
		r := meta.Role(e.Role)
		if (r == meta.RoleEndpoint || r == meta.RoleFormerEndpoint) && !slices.Contains(out, e.Addr) {
			out = append(out, e.Addr)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// deviceWatch keeps the tc device programs on the interfaces of the traced
// Service's backend pods on this machine as endpoints and pods come and go.
// Messages for the user (what is attached, failures) go to msgs.
type deviceWatch struct {
	probes  *attach.Probes
	exclude []uint32
	addrs   chan []netip.Addr
	msgs    chan string
	wg      sync.WaitGroup
	last    string // the last attached set, as reported
	lastErr string
}

func newDeviceWatch(probes *attach.Probes, exclude []uint32) *deviceWatch {
	return &deviceWatch{probes: probes, exclude: exclude, addrs: make(chan []netip.Addr, 1), msgs: make(chan string, 8)}
}

// sync attaches to the interfaces holding addrs now and returns a message
// when the attached set or the failure changed ("" otherwise).
func (w *deviceWatch) sync(addrs []netip.Addr) string {
	ifcs := podnet.Locate(addrs, w.exclude)
	devs := make([]attach.Device, 0, len(ifcs))
	for _, i := range ifcs {
		name := fmt.Sprintf("%s %s (%s)", i.NetnsName, i.Name, i.Addr)
		devs = append(devs, attach.Device{Netns: i.Netns, Inode: i.Inode, Ifindex: i.Ifindex, Name: name})
	}
	names, err := w.probes.SetDevices(devs)
	var msgs []string
	if set := strings.Join(names, ", "); set != w.last {
		w.last = set
		if set == "" {
			set = "none (no backend pod of the Service on this machine)"
		}
		msgs = append(msgs, "device events from the backend pods' interfaces: "+set)
	}
	if e := fmt.Sprint(err); err != nil && e != w.lastErr {
		msgs = append(msgs, "device programs: "+e)
		w.lastErr = e
	} else if err == nil {
		w.lastErr = ""
	}
	return strings.Join(msgs, "; ")
}

// run follows endpoint changes (update) and looks again every
// deviceRefresh until ctx ends.
func (w *deviceWatch) run(ctx context.Context, addrs []netip.Addr) {
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		t := time.NewTicker(deviceRefresh)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case addrs = <-w.addrs:
			case <-t.C:
			}
			if msg := w.sync(addrs); msg != "" {
				select {
				case w.msgs <- msg:
				default: // the reader is behind: report again on the next look
					w.last, w.lastErr = "\x00", ""
				}
			}
		}
	}()
}

// update hands the Service's new backend addresses to the watch.
func (w *deviceWatch) update(addrs []netip.Addr) {
	select {
	case <-w.addrs: // replace what was not taken yet
	default:
	}
	w.addrs <- addrs
}

func (w *deviceWatch) wait() { w.wg.Wait() }

// netnsInode is the inode of the namespace at path (0 if it cannot be read).
func netnsInode(path string) uint32 {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0
	}
	return uint32(st.Ino)
}
