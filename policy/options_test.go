package policy_test

import (
	"strings"
	"testing"

	"github.com/lookaside-lb/lookaside/policy"
)

func TestOptionsValidate(t *testing.T) {
	tests := []struct {
		name    string
		mod     func(*policy.Options)
		wantErr []string // substrings of the error; none means valid
	}{
		{"defaults", func(*policy.Options) {}, nil},
		{"smallest", func(o *policy.Options) { o.MaxEntries, o.HashSubset = 1, 1 }, nil},
		{"largest", func(o *policy.Options) { o.MaxEntries, o.HashSubset = policy.MaxMaxEntries, policy.MaxMaxEntries }, nil},
		{"zero max entries", func(o *policy.Options) { o.MaxEntries = 0 }, []string{"max entries 0"}},
		{"too many entries", func(o *policy.Options) { o.MaxEntries = policy.MaxMaxEntries + 1 }, []string{"max entries 16385"}},
		{"zero subset", func(o *policy.Options) { o.HashSubset = 0 }, []string{"hash subset 0"}},
		{"subset over max entries", func(o *policy.Options) { o.MaxEntries, o.HashSubset = 4, 5 }, []string{"hash subset 5"}},
		{"zero value", func(o *policy.Options) { *o = policy.Options{} }, []string{"max entries 0", "hash subset 0"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := policy.DefaultOptions()
			tc.mod(&o)
			err := o.Validate()
			if len(tc.wantErr) == 0 {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate() = nil, want an error about %q", tc.wantErr)
			}
			for _, want := range tc.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("Validate() = %v, want it to mention %q", err, want)
				}
			}
		})
	}
}

func TestDefaultOptions(t *testing.T) {
	o := policy.DefaultOptions()
	if o.MaxEntries != 512 || o.HashSubset != 1 {
		t.Errorf("DefaultOptions() = %+v, want MaxEntries 512, HashSubset 1", o)
	}
}
