package schemas

import (
	"cmp"
	"fmt"

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
//   - an enum value's first name changed, an alias now coming before it:
//     sinks write an enum value by its first name (protojson's), so rows
//     and entries would name it otherwise from then on.
//
// It returns an error, not a break, when old does not load.
func Breaks(old, new []byte) ([]string, error) {
	oldReg, err := Load(old)
	if err != nil {
		return nil, fmt.Errorf("old: %w", err)
	}
	newReg, err := Load(new)
	if err != nil {
		return []string{fmt.Sprintf("Spate cannot load it: %v", err)}, nil
	}
	var breaks []string
	for _, t := range oldReg.Types() {
		was, _ := oldReg.Message(t)
		switch now, err := newReg.Message(t); {
		case err != nil:
			breaks = append(breaks, fmt.Sprintf("event type %q (%s) is gone: the edge refuses its events", t, was.Descriptor().FullName()))
		case now.Descriptor().FullName() != was.Descriptor().FullName():
			breaks = append(breaks, fmt.Sprintf("event type %q is now message %s, was %s", t, now.Descriptor().FullName(), was.Descriptor().FullName()))
		}
	}
	oldFiles, err1 := setFiles(old)
	newFiles, err2 := setFiles(new)
	if err1 != nil || err2 != nil { // Load read both: not reached
		return nil, fmt.Errorf("schemas: %w", cmp.Or(err1, err2))
	}
	oldFiles.RangeFiles(func(fd protoreflect.FileDescriptor) bool {
		forEachEnum(fd, func(was protoreflect.EnumDescriptor) {
			d, err := newFiles.FindDescriptorByName(was.FullName())
			now, ok := d.(protoreflect.EnumDescriptor)
			if err != nil || !ok {
				return // gone or renamed: buf's rules tell
			}
			for i := range was.Values().Len() {
				first := was.Values().Get(i)
				if was.Values().ByNumber(first.Number()) != first {
					continue // an alias
				}
				// A first name gone is a rename, which buf's rules tell of.
				n := first.Number()
				if nowFirst := now.Values().ByNumber(n); nowFirst != nil && nowFirst.Name() != first.Name() && keeps(now, n, first.Name()) {
					breaks = append(breaks, fmt.Sprintf("enum %s value %d is now written %s, was %s: sinks write an enum value by its first name", was.FullName(), n, nowFirst.Name(), first.Name()))
				}
			}
		})
		return true
	})
	return breaks, nil
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

// forEachEnum calls f for each enum fd declares, nested ones included.
func forEachEnum(fd protoreflect.FileDescriptor, f func(protoreflect.EnumDescriptor)) {
	var msgs func(protoreflect.MessageDescriptors)
	enums := func(eds protoreflect.EnumDescriptors) {
		for i := range eds.Len() {
			f(eds.Get(i))
		}
	}
	msgs = func(mds protoreflect.MessageDescriptors) {
		for i := range mds.Len() {
			enums(mds.Get(i).Enums())
			msgs(mds.Get(i).Messages())
		}
	}
	enums(fd.Enums())
	msgs(fd.Messages())
}
