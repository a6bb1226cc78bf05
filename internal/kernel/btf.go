// Package kernel answers questions about the running kernel that decide how
// svctrace attaches: which functions and tracepoints exist and with which
// arguments (from BTF), what the drop reasons are called, which BPF features
// and modules are there, and which symbol a kernel address belongs to.
package kernel

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/cilium/ebpf/btf"
)

// ErrNoBTF means the kernel exposes no BTF (CONFIG_DEBUG_INFO_BTF is off).
var ErrNoBTF = errors.New("kernel has no BTF")

// BTF wraps the kernel's and its modules' type information. It is loaded once
// and shared by every program load; Close releases it after loading.
type BTF struct {
	cache *btf.Cache
}

// LoadBTF loads the running kernel's BTF.
func LoadBTF() (*BTF, error) {
	c := btf.NewCache()
	if _, err := c.Kernel(); err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, btf.ErrNotSupported) {
			return nil, fmt.Errorf("%w: /sys/kernel/btf/vmlinux is missing; svctrace needs a kernel built with CONFIG_DEBUG_INFO_BTF=y (Debian, Ubuntu, Fedora and RHEL kernels have it)", ErrNoBTF)
		}
		return nil, fmt.Errorf("load kernel btf: %w", err)
	}
	return &BTF{cache: c}, nil
}

// Cache returns the shared BTF cache for program loads.
func (b *BTF) Cache() *btf.Cache { return b.cache }

// Kernel returns vmlinux's BTF.
func (b *BTF) Kernel() *btf.Spec {
	s, _ := b.cache.Kernel()
	return s
}

// HasModuleBTF reports whether the named module is loaded with BTF.
func HasModuleBTF(module string) bool {
	_, err := os.Stat("/sys/kernel/btf/" + module)
	return err == nil
}

// Func finds a kernel function by name, in vmlinux or in the given modules'
// BTF. It returns the function's prototype and the module ("" for vmlinux).
func (b *BTF) Func(name string, modules ...string) (*btf.FuncProto, string, error) {
	specs := []struct {
		mod  string
		spec func() (*btf.Spec, error)
	}{{"", b.cache.Kernel}}
	for _, m := range modules {
		m := m
		specs = append(specs, struct {
			mod  string
			spec func() (*btf.Spec, error)
		}{m, func() (*btf.Spec, error) { return b.cache.Module(m) }})
	}
	for _, s := range specs {
		spec, err := s.spec()
		if err != nil {
			continue
		}
		var fn *btf.Func
		if err := spec.TypeByName(name, &fn); err != nil {
			continue
		}
		proto, ok := fn.Type.(*btf.FuncProto)
		if !ok {
			return nil, "", fmt.Errorf("btf: %s is not a function prototype", name)
		}
		return proto, s.mod, nil
	}
	return nil, "", fmt.Errorf("function %s not found in kernel btf: %w", name, os.ErrNotExist)
}

// ParamType describes parameter i of proto as C-like text ("struct sk_buff *",
// "int"), enough to check a signature against what a program expects.
func ParamType(proto *btf.FuncProto, i int) string {
	if i >= len(proto.Params) {
		return ""
	}
	return typeString(proto.Params[i].Type)
}

func typeString(t btf.Type) string {
	t = skipQualifiers(t)
	switch v := t.(type) {
	case *btf.Pointer:
		inner := skipQualifiers(v.Target)
		switch iv := inner.(type) {
		case *btf.Struct:
			return "struct " + iv.Name + " *"
		case *btf.Union:
			return "union " + iv.Name + " *"
		default:
			return typeString(inner) + " *"
		}
	case *btf.Struct:
		return "struct " + v.Name
	case *btf.Typedef:
		return v.Name
	case *btf.Int:
		return v.Name
	case *btf.Enum:
		return "enum " + v.Name
	case *btf.Void:
		return "void"
	}
	return fmt.Sprintf("%T", t)
}

func skipQualifiers(t btf.Type) btf.Type {
	for {
		switch v := t.(type) {
		case *btf.Const:
			t = v.Type
		case *btf.Volatile:
			t = v.Type
		case *btf.Restrict:
			t = v.Type
		case *btf.TypeTag:
			t = v.Type
		default:
			return t
		}
	}
}

// CheckParams verifies that the function's leading parameters have the
// expected types ("struct sk_buff *", …; "" matches anything). It returns
// an error naming the first mismatch.
func CheckParams(name string, proto *btf.FuncProto, want ...string) error {
	if len(proto.Params) < len(want) {
		return fmt.Errorf("%s has %d parameters, want at least %d", name, len(proto.Params), len(want))
	}
	for i, w := range want {
		if w == "" {
			continue
		}
		if got := ParamType(proto, i); got != w {
			return fmt.Errorf("%s parameter %d is %q, want %q", name, i+1, got, w)
		}
	}
	return nil
}

// TracepointArgs returns how many arguments the BTF tracepoint has
// (from the kernel's btf_trace_<name> typedef), or an error if it does not exist.
func (b *BTF) TracepointArgs(name string) (int, error) {
	spec := b.Kernel()
	var td *btf.Typedef
	if err := spec.TypeByName("btf_trace_"+name, &td); err != nil {
		return 0, fmt.Errorf("tracepoint %s not found in kernel btf: %w", name, os.ErrNotExist)
	}
	ptr, ok := td.Type.(*btf.Pointer)
	if !ok {
		return 0, fmt.Errorf("btf_trace_%s is not a function pointer", name)
	}
	proto, ok := ptr.Target.(*btf.FuncProto)
	if !ok {
		return 0, fmt.Errorf("btf_trace_%s is not a function pointer", name)
	}
	// The first parameter is the tracepoint's private data pointer.
	return len(proto.Params) - 1, nil
}

// DropReasons reads enum skb_drop_reason from the kernel's BTF: value -> name
// without the SKB_DROP_REASON_ prefix ("NETFILTER_DROP", "NO_SOCKET", …).
// The numbers differ between kernels, so they are never compiled in.
func (b *BTF) DropReasons() (map[uint32]string, error) {
	var enum *btf.Enum
	if err := b.Kernel().TypeByName("skb_drop_reason", &enum); err != nil {
		return nil, fmt.Errorf("enum skb_drop_reason not in kernel btf (kernels before 5.17 report no drop reasons): %w", err)
	}
	out := make(map[uint32]string, len(enum.Values))
	for _, v := range enum.Values {
		name := strings.TrimPrefix(v.Name, "SKB_DROP_REASON_")
		name = strings.TrimPrefix(name, "SKB_")
		out[uint32(v.Value)] = name
	}
	return out, nil
}
