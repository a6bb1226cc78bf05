package vm

import (
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
)

// extractVmlinux writes the uncompressed ELF kernel contained in the bzImage
// vmlinuz to out. Booting the ELF through its PVH entry point skips the
// decompressor, which is slow under TCG.
func extractVmlinux(ctx context.Context, vmlinuz, out string) error {
	img, err := os.ReadFile(vmlinuz)
	if err != nil {
		return fmt.Errorf("extract vmlinux: %w", err)
	}
	payload, size, err := bzImagePayload(img)
	if err != nil {
		return fmt.Errorf("extract vmlinux from %s: %w", vmlinuz, err)
	}
	f, err := os.Create(out)
	if err != nil {
		return fmt.Errorf("extract vmlinux: %w", err)
	}
	defer f.Close()
	if err := decompress(ctx, payload, f); err != nil {
		return fmt.Errorf("extract vmlinux from %s: %w", vmlinuz, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("extract vmlinux: %w", err)
	}
	st, err := os.Stat(out)
	if err != nil {
		return fmt.Errorf("extract vmlinux: %w", err)
	}
	if size != 0 && st.Size() != int64(size) {
		return fmt.Errorf("extract vmlinux from %s: got %d bytes, the image says %d", vmlinuz, st.Size(), size)
	}
	e, err := elf.Open(out)
	if err != nil {
		return fmt.Errorf("extract vmlinux from %s: result is not ELF: %w", vmlinuz, err)
	}
	defer e.Close()
	if !hasPVHNote(e) {
		return fmt.Errorf("extract vmlinux from %s: no PVH entry note (CONFIG_PVH is off?)", vmlinuz)
	}
	return nil
}

// bzImagePayload returns the compressed kernel inside a bzImage, and its
// uncompressed size when the image records it. See
// Documentation/arch/x86/boot.rst: payload_offset and payload_length are
// relative to the protected-mode code, which starts after the setup sectors.
func bzImagePayload(img []byte) ([]byte, uint32, error) {
	if len(img) < 0x250 || string(img[0x202:0x206]) != "HdrS" {
		return nil, 0, errors.New("not a bzImage (no HdrS header)")
	}
	setupSects := int(img[0x1f1])
	if setupSects == 0 {
		setupSects = 4
	}
	base := (setupSects + 1) * 512
	off := int(binary.LittleEndian.Uint32(img[0x248:]))
	n := int(binary.LittleEndian.Uint32(img[0x24c:]))
	if base+off+n > len(img) || n < 8 {
		return nil, 0, fmt.Errorf("payload %d+%d out of bounds (%d bytes)", base+off, n, len(img))
	}
	p := img[base+off : base+off+n]
	if bytes.HasPrefix(p, []byte{0x1f, 0x8b}) {
		// gzip carries its own size; nothing is appended.
		return p, 0, nil
	}
	// Other compressors get the uncompressed size appended as le32
	// (scripts/Makefile.lib size_append).
	return p[:n-4], binary.LittleEndian.Uint32(p[n-4:]), nil
}

// decompress writes the decompressed payload to w, using the command-line
// tools for the formats the standard library lacks.
func decompress(ctx context.Context, p []byte, w io.Writer) error {
	var tool []string
	switch {
	case bytes.HasPrefix(p, []byte{0x1f, 0x8b}):
		r, err := gzip.NewReader(bytes.NewReader(p))
		if err != nil {
			return fmt.Errorf("gunzip: %w", err)
		}
		r.Multistream(false)
		if _, err := io.Copy(w, r); err != nil {
			return fmt.Errorf("gunzip: %w", err)
		}
		return nil
	case bytes.HasPrefix(p, []byte{0xfd, '7', 'z', 'X', 'Z', 0}):
		tool = []string{"xz", "-dc", "--single-stream"}
	case bytes.HasPrefix(p, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		tool = []string{"zstd", "-dc"}
	case bytes.HasPrefix(p, []byte{0x02, 0x21, 0x4c, 0x18}):
		tool = []string{"lz4", "-dc", "-l"}
	case bytes.HasPrefix(p, []byte("BZh")):
		tool = []string{"bzip2", "-dc"}
	case bytes.HasPrefix(p, []byte{0x5d, 0, 0}):
		tool = []string{"xz", "-dc", "--format=lzma"}
	default:
		return fmt.Errorf("unknown compression (magic % x)", p[:min(6, len(p))])
	}
	return runFilter(ctx, tool, bytes.NewReader(p), w)
}

func runFilter(ctx context.Context, tool []string, r io.Reader, w io.Writer) error {
	if _, err := exec.LookPath(tool[0]); err != nil {
		return fmt.Errorf("%s is needed to decompress: %w", tool[0], err)
	}
	cmd := exec.CommandContext(ctx, tool[0], tool[1:]...)
	cmd.Stdin = r
	cmd.Stdout = w
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(tool, " "), err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// hasPVHNote looks for the Xen ELF note XEN_ELFNOTE_PHYS32_ENTRY (18), which
// qemu needs to boot an ELF kernel directly.
func hasPVHNote(f *elf.File) bool {
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		b, err := io.ReadAll(p.Open())
		if err != nil {
			continue
		}
		for len(b) >= 12 {
			nameSz := binary.LittleEndian.Uint32(b)
			descSz := binary.LittleEndian.Uint32(b[4:])
			typ := binary.LittleEndian.Uint32(b[8:])
			nameEnd := 12 + align4(nameSz)
			end := nameEnd + align4(descSz)
			if end > uint32(len(b)) {
				break
			}
			name := strings.TrimRight(string(b[12:12+nameSz]), "\x00")
			if name == "Xen" && typ == 18 {
				return true
			}
			b = b[end:]
		}
	}
	return false
}

func align4(n uint32) uint32 { return (n + 3) &^ 3 }
