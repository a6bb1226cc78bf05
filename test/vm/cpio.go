package vm

import (
	"fmt"
	"io"
	"syscall"
)

// cpioWriter writes the "newc" cpio format the kernel unpacks as initramfs.
// Writing the archive ourselves lets it hold device nodes without privileges.
type cpioWriter struct {
	w   io.Writer
	ino uint32
	off int64
	err error
}

func newCPIOWriter(w io.Writer) *cpioWriter { return &cpioWriter{w: w, ino: 1} }

func (c *cpioWriter) write(b []byte) {
	if c.err != nil {
		return
	}
	n, err := c.w.Write(b)
	c.off += int64(n)
	c.err = err
}

func (c *cpioWriter) pad() {
	if r := c.off % 4; r != 0 {
		c.write(make([]byte, 4-r))
	}
}

func (c *cpioWriter) header(name string, mode, size, rdevMajor, rdevMinor uint32) {
	c.ino++
	nlink := uint32(1)
	if mode&syscall.S_IFMT == syscall.S_IFDIR {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, nlink, 0, size, 0, 0, rdevMajor, rdevMinor, len(name)+1, 0)
	c.write([]byte(hdr))
	c.write([]byte(name + "\x00"))
	c.pad()
}

// Dir adds a directory.
func (c *cpioWriter) Dir(name string, perm uint32) {
	c.header(name, syscall.S_IFDIR|perm, 0, 0, 0)
}

// File adds a regular file.
func (c *cpioWriter) File(name string, perm uint32, data []byte) {
	c.header(name, syscall.S_IFREG|perm, uint32(len(data)), 0, 0)
	c.write(data)
	c.pad()
}

// Symlink adds a symbolic link.
func (c *cpioWriter) Symlink(name, target string) {
	c.header(name, syscall.S_IFLNK|0o777, uint32(len(target)), 0, 0)
	c.write([]byte(target))
	c.pad()
}

// CharDev adds a character device node.
func (c *cpioWriter) CharDev(name string, perm, major, minor uint32) {
	c.header(name, syscall.S_IFCHR|perm, 0, major, minor)
}

// Close writes the trailer.
func (c *cpioWriter) Close() error {
	c.header("TRAILER!!!", 0, 0, 0, 0)
	return c.err
}
