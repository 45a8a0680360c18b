package iscsi

import (
	"reflect"
	"testing"
)

func TestParseKeys(t *testing.T) {
	cases := []struct {
		in   string
		want []kv
		err  bool
	}{
		{"", nil, false},
		{"A=1\x00", []kv{{"A", "1"}}, false},
		{"A=1\x00B=\x00", []kv{{"A", "1"}, {"B", ""}}, false},
		{"A=1\x00\x00\x00", []kv{{"A", "1"}}, false},
		{"A=1", []kv{{"A", "1"}}, false}, // missing final NUL tolerated
		{"A=x=y\x00", []kv{{"A", "x=y"}}, false},
		{"TargetName=a\x00TargetName=b\x00", []kv{{"TargetName", "a"}, {"TargetName", "b"}}, false},
		{"noequals\x00", nil, true},
		{"=v\x00", nil, true},
		{"bad key=v\x00", nil, true},
		{"A=1\x00\x00B=2\x00", nil, true},
		{string(make([]byte, 64)) + "=1", nil, true},
	}
	for _, tc := range cases {
		got, err := parseKeys([]byte(tc.in))
		if (err != nil) != tc.err {
			t.Errorf("parseKeys(%q) error %v, want error %v", tc.in, err, tc.err)
			continue
		}
		if !tc.err && !reflect.DeepEqual(got, tc.want) {
			t.Errorf("parseKeys(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestNegotiate(t *testing.T) {
	ours := testOurs()
	ours.MaxBurstLength = 1 << 20
	ours.FirstBurstLength = 256 << 10
	ours.MaxOutstandingR2T = 16
	ours.InitialR2T = false
	ours.ImmediateData = true
	cases := []struct {
		key, offer, want string
		check            func(p Params) bool
	}{
		{"HeaderDigest", "CRC32C,None", "CRC32C", func(p Params) bool { return p.HeaderDigest == "CRC32C" }},
		{"DataDigest", "None,CRC32C", "None", func(p Params) bool { return p.DataDigest == "None" }},
		{"HeaderDigest", "MD5", "Reject", nil},
		{"MaxConnections", "8", "1", func(p Params) bool { return p.MaxConnections == 1 }},
		{"MaxConnections", "0", "Reject", nil},
		{"InitialR2T", "Yes", "Yes", func(p Params) bool { return p.InitialR2T }},
		{"InitialR2T", "No", "No", func(p Params) bool { return !p.InitialR2T }},
		{"InitialR2T", "Maybe", "Reject", nil},
		{"ImmediateData", "No", "No", func(p Params) bool { return !p.ImmediateData }},
		{"ImmediateData", "Yes", "Yes", func(p Params) bool { return p.ImmediateData }},
		{"MaxBurstLength", "262144", "262144", func(p Params) bool { return p.MaxBurstLength == 262144 }},
		{"MaxBurstLength", "16776192", "1048576", func(p Params) bool { return p.MaxBurstLength == 1<<20 }},
		{"MaxBurstLength", "511", "Reject", nil},
		{"MaxBurstLength", "16777216", "Reject", nil},
		{"MaxBurstLength", "abc", "Reject", nil},
		{"FirstBurstLength", "65536", "65536", func(p Params) bool { return p.FirstBurstLength == 65536 }},
		{"DefaultTime2Wait", "0", "2", func(p Params) bool { return p.DefaultTime2Wait == 2 }},
		{"DefaultTime2Wait", "10", "10", func(p Params) bool { return p.DefaultTime2Wait == 10 }},
		{"DefaultTime2Retain", "0", "0", func(p Params) bool { return p.DefaultTime2Retain == 0 }},
		{"DefaultTime2Retain", "3601", "Reject", nil},
		{"MaxOutstandingR2T", "64", "16", func(p Params) bool { return p.MaxOutstandingR2T == 16 }},
		{"MaxOutstandingR2T", "2", "2", func(p Params) bool { return p.MaxOutstandingR2T == 2 }},
		{"DataPDUInOrder", "No", "Yes", func(p Params) bool { return p.DataPDUInOrder }},
		{"DataSequenceInOrder", "No", "Yes", func(p Params) bool { return p.DataSequenceInOrder }},
		{"ErrorRecoveryLevel", "2", "0", func(p Params) bool { return p.ErrorRecoveryLevel == 0 }},
		{"ErrorRecoveryLevel", "3", "Reject", nil},
		{"IFMarker", "Yes", "No", nil},
		{"OFMarker", "No", "No", nil},
		{"OFMarkInt", "2048", "Irrelevant", nil},
		{"MaxRecvDataSegmentLength", "65536", "", func(p Params) bool { return p.MaxXmitDataSegmentLength == 65536 }},
		{"MaxRecvDataSegmentLength", "100", "Reject", nil},
		{"MaxRecvDataSegmentLength", "0x10000", "", func(p Params) bool { return p.MaxXmitDataSegmentLength == 65536 }},
		{"MaxRecvDataSegmentLength", "0", "Reject", func(p Params) bool { return p.MaxXmitDataSegmentLength == 8192 }},
		{"MaxRecvDataSegmentLength", "-5", "Reject", nil},
		{"MaxRecvDataSegmentLength", "+8192", "Reject", nil},
		{"MaxRecvDataSegmentLength", "16777216", "Reject", nil},
		{"MaxRecvDataSegmentLength", "16777215", "", func(p Params) bool { return p.MaxXmitDataSegmentLength == 1<<24-1 }},
		{"MaxBurstLength", "0x40000", "262144", func(p Params) bool { return p.MaxBurstLength == 262144 }},
		{"MaxBurstLength", "0X200", "512", func(p Params) bool { return p.MaxBurstLength == 512 }},
		{"MaxBurstLength", "0x1000000", "Reject", nil},
		{"MaxBurstLength", "4294967808", "Reject", func(p Params) bool { return p.MaxBurstLength == 262144 }},
		{"FirstBurstLength", "511", "Reject", nil},
		{"FirstBurstLength", "16777216", "Reject", nil},
		{"MaxConnections", "65536", "Reject", nil},
		{"MaxOutstandingR2T", "0", "Reject", nil},
		{"MaxOutstandingR2T", "65536", "Reject", nil},
		{"DefaultTime2Wait", "3601", "Reject", nil},
		{"DefaultTime2Wait", "-1", "Reject", nil},
		{"DefaultTime2Retain", "0x0", "0", nil},
		{"ErrorRecoveryLevel", "0x1", "0", nil},
		{"X-vendor.key", "1", "NotUnderstood", nil},
		{"Unknown", "1", "NotUnderstood", nil},
	}
	for _, tc := range cases {
		n := newNegotiator(ours, true)
		got, err := n.negotiate(tc.key, tc.offer)
		if err != nil {
			t.Errorf("%s=%s: %v", tc.key, tc.offer, err)
			continue
		}
		if got != tc.want {
			t.Errorf("%s=%s -> %q, want %q", tc.key, tc.offer, got, tc.want)
		}
		if tc.check != nil && !tc.check(n.cur) {
			t.Errorf("%s=%s: params %+v", tc.key, tc.offer, n.cur)
		}
	}
	// Without CRC32C support only None is chosen.
	n := newNegotiator(ours, false)
	if got, _ := n.negotiate("DataDigest", "CRC32C,None"); got != "None" {
		t.Errorf("no CRC32C: %q", got)
	}
	// Negotiating a key twice fails the login.
	n = newNegotiator(ours, true)
	n.negotiate("MaxBurstLength", "4096")
	if _, err := n.negotiate("MaxBurstLength", "4096"); err == nil {
		t.Error("renegotiation accepted")
	}
}

func TestNegotiateCrossKeyRules(t *testing.T) {
	ours := testOurs()
	// FirstBurstLength is capped by MaxBurstLength.
	n := newNegotiator(ours, true)
	var resp []kv
	for _, p := range []kv{{"FirstBurstLength", "262144"}, {"MaxBurstLength", "65536"}} {
		v, _ := n.negotiate(p.Key, p.Value)
		resp = append(resp, kv{p.Key, v})
	}
	resp = n.finish(resp)
	if resp[0].Value != "65536" || n.cur.FirstBurstLength != 65536 {
		t.Errorf("FirstBurstLength not capped: %v %+v", resp, n.cur)
	}
	// InitialR2T=Yes with ImmediateData=No makes FirstBurstLength irrelevant.
	n = newNegotiator(ours, true)
	resp = nil
	for _, p := range []kv{{"FirstBurstLength", "65536"}, {"InitialR2T", "Yes"}, {"ImmediateData", "No"}} {
		v, _ := n.negotiate(p.Key, p.Value)
		resp = append(resp, kv{p.Key, v})
	}
	resp = n.finish(resp)
	if resp[0].Value != "Irrelevant" {
		t.Errorf("FirstBurstLength = %q, want Irrelevant", resp[0].Value)
	}
	// Discovery sessions answer session-only keys with Irrelevant.
	n = newNegotiator(ours, true)
	n.discovery = true
	if v, _ := n.negotiate("MaxBurstLength", "4096"); v != "Irrelevant" {
		t.Errorf("discovery MaxBurstLength = %q", v)
	}
	if v, _ := n.negotiate("HeaderDigest", "None"); v != "None" {
		t.Errorf("discovery HeaderDigest = %q", v)
	}
}

func testOurs() Params {
	var c Config
	c.setDefaults()
	return c.ourParams()
}
