package meta

import (
	"errors"
	"sort"
	"strings"
)

// ErrUnknownService matches (errors.Is) the error Snapshot.Service returns for a Service that
// is not in the snapshot.
var ErrUnknownService = errors.New("unknown service")

// UnknownServiceError is the error for a Service that is not in the snapshot.
type UnknownServiceError struct {
	Namespace string
	Name      string
	// Suggestions are existing services ("namespace/name") with a similar name in the same
	// namespace or the same name in other namespaces, best first (at most 3).
	Suggestions []string
}

// Error returns e.g. "service default/hostname not found; did you mean default/hostnames?".
func (e *UnknownServiceError) Error() string {
	msg := "service " + e.Namespace + "/" + e.Name + " not found"
	switch n := len(e.Suggestions); {
	case n == 1:
		msg += "; did you mean " + e.Suggestions[0] + "?"
	case n > 1:
		msg += "; did you mean " + strings.Join(e.Suggestions[:n-1], ", ") + " or " + e.Suggestions[n-1] + "?"
	}
	return msg
}

// Is makes errors.Is(err, ErrUnknownService) true.
func (e *UnknownServiceError) Is(target error) bool { return target == ErrUnknownService }

const maxSuggestions = 3

func (s *Snapshot) unknownService(namespace, name string) error {
	type cand struct {
		ref   string
		score int
	}
	var cands []cand
	maxDist := 2
	if len(name) <= 4 {
		maxDist = 1
	}
	lname := strings.ToLower(name)
	for _, svc := range s.serviceList {
		lsvc := strings.ToLower(svc.Name)
		var score int
		switch {
		case svc.Namespace != namespace && svc.Name == name:
			score = 0
		case svc.Namespace == namespace:
			d := levenshtein(lname, lsvc)
			if d > maxDist && !(len(lname) >= 3 && (strings.HasPrefix(lsvc, lname) || strings.HasPrefix(lname, lsvc))) {
				continue
			}
			score = 1 + d
		default:
			continue
		}
		cands = append(cands, cand{svc.String(), score})
	}
	sort.SliceStable(cands, func(i, j int) bool { return cands[i].score < cands[j].score })
	err := &UnknownServiceError{Namespace: namespace, Name: name}
	for i := 0; i < len(cands) && i < maxSuggestions; i++ {
		err.Suggestions = append(err.Suggestions, cands[i].ref)
	}
	return err
}

// levenshtein returns the edit distance between a and b (bytes; names are ASCII).
func levenshtein(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
