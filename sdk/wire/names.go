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

// Topics that belong to a consumer group: its redeliveries and its dead
// letters (sdk/redelivery.go). Their names start with the reserved "__",
// so no user topic can take them; a principal with the groups right on
// the group may write, read and create them.
const (
	RetryTopicPrefix      = "__retry."
	DeadLetterTopicPrefix = "__dlq."
)

// RetryTopic is group's redelivery topic.
func RetryTopic(group string) string { return RetryTopicPrefix + group }

// DeadLetterTopic is group's dead-letter topic.
func DeadLetterTopic(group string) string { return DeadLetterTopicPrefix + group }

// GroupTopic reports whether topic is a consumer group's redelivery or
// dead-letter topic, and whose.
func GroupTopic(topic string) (group string, ok bool) {
	for _, p := range []string{RetryTopicPrefix, DeadLetterTopicPrefix} {
		if len(topic) > len(p) && topic[:len(p)] == p {
			g := topic[len(p):]
			return g, ValidName("group", g) == nil
		}
	}
	return "", false
}
