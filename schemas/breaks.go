package schemas

import (
	"fmt"
	"maps"
	"slices"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
)

// Breaks returns the changes from the descriptor set old to new that break
// Spate's producers or consumers where buf's breaking-change rules, which
// compare files, do not look:
//   - new does not load as a registry (Load refuses it), so no role starts;
//   - an event type of old is gone from new, or names another message:
//     its producers' events are refused;
//   - a value of an enum that an event type's payload holds got a new first
//     name, an alias now coming before it: sinks write an enum value by its
//     first name (protojson's), so rows and entries would name it otherwise
//     from then on.
//
// old is read as it is, its own copies of files Spate compiles in
// included: it may be an earlier release's set. It returns an error, not a
// break, when old does not read.
func Breaks(old, new []byte) ([]string, error) {
	oldFiles, err := setFiles(old)
	if err != nil {
		return nil, fmt.Errorf("old: %w", err)
	}
	var all []protoreflect.FileDescriptor
	oldFiles.RangeFiles(func(fd protoreflect.FileDescriptor) bool {
		all = append(all, fd)
		return true
	})
	oldReg, err := New(all...)
	if err != nil {
		return nil, fmt.Errorf("old: %w", err)
	}
	newReg, err := Load(new)
	if err != nil {
		return []string{fmt.Sprintf("Spate cannot load it: %v", err)}, nil
	}
	newFiles, err := setFiles(new)
	if err != nil { // Load read it: not reached
		return nil, err
	}
	var breaks []string
	enums := map[protoreflect.FullName]protoreflect.EnumDescriptor{} // those the payloads of old hold
	seen := map[protoreflect.FullName]bool{}
	for _, t := range oldReg.Types() {
		was, _ := oldReg.Message(t)
		switch now, err := newReg.Message(t); {
		case err != nil:
			breaks = append(breaks, fmt.Sprintf("event type %q (%s) is gone: the edge refuses its events", t, was.Descriptor().FullName()))
		case now.Descriptor().FullName() != was.Descriptor().FullName():
			breaks = append(breaks, fmt.Sprintf("event type %q is now message %s, was %s", t, now.Descriptor().FullName(), was.Descriptor().FullName()))
		}
		enumsOf(was.Descriptor(), enums, seen)
	}
	for _, name := range slices.Sorted(maps.Keys(enums)) {
		// An enum gone or renamed is buf's rules' to tell of.
		if d, err := newFiles.FindDescriptorByName(name); err == nil {
			if now, ok := d.(protoreflect.EnumDescriptor); ok {
				breaks = append(breaks, newFirstNames(enums[name], now)...)
			}
		}
	}
	return breaks, nil
}

// newFirstNames tells of each value of enum was whose first name now comes
// after an alias in now. A first name gone is a rename, which buf's rules
// tell of.
func newFirstNames(was, now protoreflect.EnumDescriptor) []string {
	var breaks []string
	for i := range was.Values().Len() {
		first := was.Values().Get(i)
		n := first.Number()
		if was.Values().ByNumber(n) != first {
			continue // an alias
		}
		if nowFirst := now.Values().ByNumber(n); nowFirst != nil && nowFirst.Name() != first.Name() && keeps(now, n, first.Name()) {
			breaks = append(breaks, fmt.Sprintf("enum %s value %d is now written %s, was %s: sinks write an enum value by its first name", was.FullName(), n, nowFirst.Name(), first.Name()))
		}
	}
	return breaks
}

// enumsOf adds to enums those the fields of md hold, and those of the
// messages its fields hold, through seen.
func enumsOf(md protoreflect.MessageDescriptor, enums map[protoreflect.FullName]protoreflect.EnumDescriptor, seen map[protoreflect.FullName]bool) {
	if seen[md.FullName()] {
		return
	}
	seen[md.FullName()] = true
	fds := md.Fields()
	for i := range fds.Len() {
		switch fd := fds.Get(i); {
		case fd.Enum() != nil:
			enums[fd.Enum().FullName()] = fd.Enum()
		case fd.Message() != nil:
			enumsOf(fd.Message(), enums, seen)
		}
	}
}

// setFiles returns the files of a serialized FileDescriptorSet.
func setFiles(set []byte) (*protoregistry.Files, error) {
	var fds descriptorpb.FileDescriptorSet
	if err := proto.Unmarshal(set, &fds); err != nil {
		return nil, err
	}
	return protodesc.NewFiles(&fds)
}

// keeps reports whether enum ed still names number n name, as an alias.
func keeps(ed protoreflect.EnumDescriptor, n protoreflect.EnumNumber, name protoreflect.Name) bool {
	v := ed.Values().ByName(name)
	return v != nil && v.Number() == n
}
