package iscsitest

import (
	"bytes"
	"encoding/hex"
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

// pair returns an initiator Conn and the target's end of the same pipe,
// read and written with a second Conn (Recv and Send take any PDU).
func pair(t *testing.T) (ini, tgt *Conn) {
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	return NewConn(a), NewConn(b)
}

// serve runs the scripted target f and reports its failure at cleanup.
func serve(t *testing.T, f func() error) {
	done := make(chan error, 1)
	go func() { done <- f() }()
	t.Cleanup(func() {
		if err := <-done; err != nil {
			t.Errorf("scripted target: %v", err)
		}
	})
}

func TestEncodeRecvDigests(t *testing.T) {
	for _, dig := range []bool{false, true} {
		ini, tgt := pair(t)
		ini.HeaderDigest, ini.DataDigest = dig, dig
		tgt.HeaderDigest, tgt.DataDigest = dig, dig
		var h BHS
		h[0] = OpSCSIResp
		h.SetITT(7)
		h.SetU32(24, 41)
		data := []byte("hello") // 5 bytes: padding and the data digest cover 3 more
		want := BHSLen + 4 + 8
		if dig {
			want += 8
		}
		if n := len(Encode(&PDU{BHS: h, AHS: []byte{1, 2, 3, 4}, Data: data}, dig, dig)); n != want {
			t.Fatalf("digests %v: encoded %d bytes, want %d", dig, n, want)
		}
		go tgt.Send(&h, []byte{1, 2, 3, 4}, data)
		p, err := ini.Recv(time.Second)
		if err != nil {
			t.Fatalf("digests %v: %v", dig, err)
		}
		if p.Opcode() != OpSCSIResp || p.BHS.ITT() != 7 || !bytes.Equal(p.Data, data) || !bytes.Equal(p.AHS, []byte{1, 2, 3, 4}) {
			t.Fatalf("digests %v: got %+v", dig, p)
		}
		if ini.ExpStatSN != 42 {
			t.Fatalf("ExpStatSN %d after StatSN 41, want 42", ini.ExpStatSN)
		}
	}
}

func TestRecvBadDigest(t *testing.T) {
	ini, tgt := pair(t)
	ini.HeaderDigest, ini.DataDigest = true, true
	var h BHS
	h[0] = OpNOPIn
	b := Encode(&PDU{BHS: h, Data: []byte("abcd")}, true, true)
	b[len(b)-1] ^= 1
	go tgt.SendRaw(b)
	if _, err := ini.Recv(time.Second); !errors.Is(err, ErrDigest) {
		t.Fatalf("corrupt data digest: %v, want ErrDigest", err)
	}
}

func TestParseKeys(t *testing.T) {
	m, err := ParseKeys(Keys("A=1", "B=", "C=x=y"))
	if err != nil || len(m) != 3 || m["A"] != "1" || m["B"] != "" || m["C"] != "x=y" {
		t.Fatalf("ParseKeys: %v %v", m, err)
	}
	for _, bad := range []string{"A=1", "A\x00", "=1\x00", "A=1\x00A=2\x00"} {
		if _, err := ParseKeys([]byte(bad)); err == nil {
			t.Errorf("ParseKeys(%q) accepted", bad)
		}
	}
}

func TestOverride(t *testing.T) {
	got := strings.Join(override([]string{"A=1", "B=2"}, []string{"B=3", "C=4"}), " ")
	if got != "A=1 B=3 C=4" {
		t.Fatalf("override: %s", got)
	}
}

// loginReply answers the login request p with keys, moving to nsg when
// transit; it checks the request's stages.
func loginReply(tgt *Conn, p *PDU, csg, nsg int, transit bool, keys ...string) error {
	if p.Opcode() != OpLoginReq || int(p.BHS[1]>>2&3) != csg {
		return errors.New("unexpected login request")
	}
	var h BHS
	h[0] = OpLoginResp
	h[1] = byte(csg<<2 | nsg)
	if transit {
		h[1] |= FlagTransit
	}
	h.SetU16(14, 5)
	h.SetITT(p.BHS.ITT())
	return tgt.Send(&h, nil, Keys(keys...))
}

func TestLoginCHAP(t *testing.T) {
	ini, tgt := pair(t)
	chal := []byte{9, 8, 7, 6}
	serve(t, func() error {
		p, err := tgt.Recv(time.Second)
		if err != nil {
			return err
		}
		if m, _ := ParseKeys(p.Data); m["AuthMethod"] != "CHAP" || m["TargetName"] != "iqn.t" || p.BHS[1]&FlagTransit != 0 {
			return errors.New("first request not a CHAP offer without transit")
		}
		loginReply(tgt, p, 0, 1, false, "AuthMethod=CHAP")
		if p, err = tgt.Recv(time.Second); err != nil {
			return err
		}
		loginReply(tgt, p, 0, 1, false, "CHAP_A=7", "CHAP_I=3", "CHAP_C=0x"+hex.EncodeToString(chal))
		if p, err = tgt.Recv(time.Second); err != nil {
			return err
		}
		want, _ := CHAPResponse("7", 3, "s3cret", chal)
		if m, _ := ParseKeys(p.Data); m["CHAP_N"] != "u" || m["CHAP_R"] != "0x"+hex.EncodeToString(want) {
			return errors.New("wrong CHAP response")
		}
		loginReply(tgt, p, 0, 1, true)
		if p, err = tgt.Recv(time.Second); err != nil {
			return err
		}
		return loginReply(tgt, p, 1, 3, true, "MaxBurstLength=4096")
	})
	m, err := ini.Login(LoginOptions{Initiator: "iqn.i", Target: "iqn.t", CHAP: &CHAP{User: "u", Secret: "s3cret"}})
	if err != nil {
		t.Fatal(err)
	}
	if m["MaxBurstLength"] != "4096" || ini.TSIH != 5 {
		t.Fatalf("keys %v TSIH %d", m, ini.TSIH)
	}
}

func TestLoginNoTransitFails(t *testing.T) {
	ini, tgt := pair(t)
	serve(t, func() error {
		p, err := tgt.Recv(time.Second)
		if err != nil {
			return err
		}
		return loginReply(tgt, p, 1, 3, false)
	})
	if _, err := ini.Login(LoginOptions{Initiator: "iqn.i", Target: "iqn.t", SkipSecurity: true}); err == nil {
		t.Fatal("login succeeded without the target moving to full feature phase")
	}
}

// TestWriteR2T: with InitialR2T=Yes and no immediate data, Write sends
// only the command, then Data-Outs of at most seg bytes for each R2T.
func TestWriteR2T(t *testing.T) {
	ini, tgt := pair(t)
	ini.Params = map[string]string{"ImmediateData": "No", "InitialR2T": "Yes"}
	data := bytes.Repeat([]byte{0xa5}, 3000)
	var got []byte
	serve(t, func() error {
		cmd, err := tgt.Recv(time.Second)
		if err != nil {
			return err
		}
		if cmd.Opcode() != OpSCSICmd || len(cmd.Data) != 0 || cmd.BHS.U32(20) != 3000 || cmd.BHS[1]&FlagWrite == 0 {
			return errors.New("bad write command")
		}
		for _, r := range [][2]uint32{{0, 2048}, {2048, 952}} {
			var h BHS
			h[0] = OpR2T
			h.SetITT(cmd.BHS.ITT())
			h.SetU32(20, 100+r[0])
			h.SetU32(40, r[0])
			h.SetU32(44, r[1])
			tgt.Send(&h, nil, nil)
			for sn := uint32(0); ; sn++ {
				p, err := tgt.Recv(time.Second)
				if err != nil {
					return err
				}
				if p.Opcode() != OpDataOut || p.BHS.U32(20) != 100+r[0] || p.BHS.U32(36) != sn || len(p.Data) > 1024 || p.BHS.U32(40) != uint32(len(got)) {
					return errors.New("bad Data-Out")
				}
				got = append(got, p.Data...)
				if p.BHS[1]&FlagFinal != 0 {
					break
				}
			}
		}
		var h BHS
		h[0] = OpSCSIResp
		h[1] = FlagFinal
		h.SetITT(cmd.BHS.ITT())
		return tgt.Send(&h, nil, nil)
	})
	r, err := ini.Write(CDB10(0x2a, 0, 6), data, 1024)
	if err != nil {
		t.Fatal(err)
	}
	if r.Status != 0 || len(r.R2Ts) != 2 {
		t.Fatalf("status %#x, %d R2Ts", r.Status, len(r.R2Ts))
	}
	tgt.Close()
	if !bytes.Equal(got, data) {
		t.Fatalf("target received %d bytes, want the 3000 written", len(got))
	}
}

func TestExpectClose(t *testing.T) {
	ini, tgt := pair(t)
	var h BHS
	h[0] = OpReject
	go func() { tgt.Send(&h, nil, nil); tgt.Close() }()
	if err := ini.ExpectClose(time.Second); err != nil {
		t.Fatal(err)
	}
	ini, _ = pair(t)
	if err := ini.ExpectClose(50 * time.Millisecond); err == nil {
		t.Fatal("a silent open connection passed ExpectClose")
	}
}

// TestTextContinuation: a Text answer split over two responses is asked
// for again with the target's TTT and comes back whole.
func TestTextContinuation(t *testing.T) {
	ini, tgt := pair(t)
	serve(t, func() error {
		var ttt uint32 = TagNone
		for i, part := range []string{"TargetName=iqn.a", "TargetName=iqn.b"} {
			p, err := tgt.Recv(time.Second)
			if err != nil {
				return err
			}
			if p.Opcode() != OpTextReq || p.BHS.U32(20) != ttt || (i == 0) != (len(p.Data) > 0) {
				return errors.New("bad Text Request")
			}
			var h BHS
			h[0] = OpTextResp
			if i == 1 {
				h[1] = FlagFinal
			} else {
				h[1] = FlagContinue
			}
			h.SetITT(p.BHS.ITT())
			ttt = 77
			h.SetU32(20, ttt)
			if err := tgt.Send(&h, nil, Keys(part)); err != nil {
				return err
			}
		}
		return nil
	})
	data, n, err := ini.Text(Keys("SendTargets=All"))
	if err != nil || n != 2 || string(data) != "TargetName=iqn.a\x00TargetName=iqn.b\x00" {
		t.Fatalf("Text: %q in %d responses, %v", data, n, err)
	}
}
