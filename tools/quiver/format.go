package main

import (
	"strconv"

	"github.com/quivermq/quiver/sdk"
)

// Output formats, in kcat's -f convention: a string in which these tokens
// are replaced for each message, and \n, \t, \\ are escapes.
const formatHelp = `%t topic, %g broker group, %p queue, %o offset, %k key, %K key length,
%s body, %S body length, %a tags, %h headers (k=v,k=v), %T store time and
%c client time (unix milliseconds), %R redeliveries, %% a percent sign`

type formatPart struct {
	lit  string // a literal (verb 0)
	verb byte
}

type format []formatPart

// parseFormat compiles a --format string.
func parseFormat(s string) (format, error) {
	var f format
	var lit []byte
	flush := func() {
		if len(lit) > 0 {
			f = append(f, formatPart{lit: string(lit)})
			lit = nil
		}
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\' && i+1 < len(s):
			i++
			switch s[i] {
			case 'n':
				lit = append(lit, '\n')
			case 't':
				lit = append(lit, '\t')
			case '\\':
				lit = append(lit, '\\')
			default:
				return nil, usagef("--format: unknown escape \\%c", s[i])
			}
		case c == '%' && i+1 < len(s):
			i++
			switch v := s[i]; v {
			case '%':
				lit = append(lit, '%')
			case 't', 'g', 'p', 'o', 'k', 'K', 's', 'S', 'a', 'h', 'T', 'c', 'R':
				flush()
				f = append(f, formatPart{verb: v})
			default:
				return nil, usagef("--format: unknown token %%%c (%s)", v, formatHelp)
			}
		case c == '%' || c == '\\':
			return nil, usagef("--format ends in a lone %c", c)
		default:
			lit = append(lit, c)
		}
	}
	flush()
	return f, nil
}

// format appends m as f says to dst.
func (f format) format(dst []byte, m *sdk.Message) []byte {
	for _, p := range f {
		switch p.verb {
		case 0:
			dst = append(dst, p.lit...)
		case 't':
			dst = append(dst, m.Topic...)
		case 'g':
			dst = append(dst, m.Group...)
		case 'p':
			dst = strconv.AppendUint(dst, uint64(m.Queue), 10)
		case 'o':
			dst = strconv.AppendUint(dst, m.Offset, 10)
		case 'k':
			dst = append(dst, m.Key...)
		case 'K':
			dst = strconv.AppendInt(dst, int64(len(m.Key)), 10)
		case 's':
			dst = append(dst, m.Body...)
		case 'S':
			dst = strconv.AppendInt(dst, int64(len(m.Body)), 10)
		case 'a':
			dst = append(dst, m.Tags...)
		case 'h':
			for i, h := range m.Headers {
				if i > 0 {
					dst = append(dst, ',')
				}
				dst = append(dst, h.Key...)
				dst = append(dst, '=')
				dst = append(dst, h.Value...)
			}
		case 'T':
			dst = strconv.AppendInt(dst, m.StoreTime.UnixMilli(), 10)
		case 'c':
			dst = strconv.AppendInt(dst, m.ClientTime.UnixMilli(), 10)
		case 'R':
			dst = strconv.AppendInt(dst, int64(m.Redeliveries()), 10)
		}
	}
	return dst
}
