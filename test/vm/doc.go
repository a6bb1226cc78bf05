// Package vm runs commands, typically Go test binaries built on the host,
// inside qemu VMs that boot Debian's own kernels, so that the tracer is tested
// on the kernels it supports (kernels.json) and not only on the host's.
//
// A VM boots the uncompressed vmlinux through its PVH entry with a small
// busybox initramfs, which loads the 9p and overlay modules, mounts the host's
// root read-only over 9p under an overlay with a tmpfs upper layer, mounts the
// kernel's modules at /usr/lib/modules/<release>, and hands over to a script
// that runs the command as root. The command's output and exit status come
// back through a writable 9p directory; the kernel console stays apart
// (SVCTRACE_VM_CONSOLE=1 shows it).
//
//	m, _ := vm.ReadMatrix("test/vm/kernels.json")
//	k, _ := m.Kernel("6.12")
//	img, _ := k.Prepare(ctx, cacheDir)   // download, verify, extract, cache
//	res, _ := img.Run(ctx, vm.RunOptions{Args: []string{bin, "-test.v"}, Dir: dir})
//
// See README.md for the commands built on it: vmexec (go test -exec),
// vmmatrix (kernels × cells table) and vmkernels (pinning and cache warm-up).
package vm
