package wire

import "fmt"

// ValidName checks a topic or consumer-group name (and a principal's in
// an ACL): 1 to 255 bytes of letters, digits, '.', '_' and '-'. Every
// place that creates a topic or joins a group checks it.
func ValidName(kind, s string) error {
	if s == "" || len(s) > MaxTopicLen {
		return fmt.Errorf("%s name of %d bytes (1 to %d)", kind, len(s), MaxTopicLen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("%s name %q: only letters, digits, '.', '_' and '-' are allowed", kind, s)
		}
	}
	return nil
}
