package service

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"github.com/anvilproject/anvil/catalog"
	"github.com/anvilproject/anvil/engine"
)

// ErrNotSupported is returned when a volume's backend cannot make a change
// online (for example a backend without engine.Resizer).
var ErrNotSupported = errors.New("not supported by the volume's backend")

// ResizeVolume changes a volume's size online and establishes a CAPACITY
// DATA HAS CHANGED unit attention for every initiator that knows it.
// Shrinking is refused: it would silently discard data an initiator still
// addresses.
// CheckResize reports whether ResizeVolume would accept size, without
// changing anything, so that a request changing several settings can be
// refused whole.
func (s *Service) CheckResize(name string, size int64) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	lv, ok := s.volumes[name]
	if !ok {
		return s.missingLocked(name)
	}
	return checkResize(lv, size)
}

func checkResize(lv *liveVolume, size int64) error {
	bs := int64(lv.rec.BlockSize)
	if size <= 0 || size > MaxVolumeSize || size%bs != 0 {
		return invalid("size_bytes", "%d: must be a positive multiple of the block size (%d), at most %d", size, bs, int64(MaxVolumeSize))
	}
	if size < lv.rec.SizeBytes {
		return invalid("size_bytes", "%d: smaller than the current size %d; shrinking a volume is not supported", size, lv.rec.SizeBytes)
	}
	if _, ok := lv.vol.(engine.Resizer); !ok && size != lv.rec.SizeBytes {
		return fmt.Errorf("resize volume %q: %w", lv.rec.Name, ErrNotSupported)
	}
	return nil
}

func (s *Service) ResizeVolume(ctx context.Context, name string, size int64) (catalog.Volume, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	lv, ok := s.volumes[name]
	if !ok {
		return catalog.Volume{}, s.missingLocked(name)
	}
	if err := checkResize(lv, size); err != nil {
		return catalog.Volume{}, err
	}
	if size == lv.rec.SizeBytes {
		return lv.rec, nil
	}
	rz, ok := lv.vol.(engine.Resizer)
	if !ok {
		return catalog.Volume{}, fmt.Errorf("resize volume %q: %w", name, ErrNotSupported)
	}
	old := lv.rec.SizeBytes
	// Grow the volume before recording it: a catalog that claims more than
	// the file holds would fail the next start-up.
	if err := rz.Resize(ctx, size); err != nil {
		if cerr := clientFault(err); cerr != err {
			return catalog.Volume{}, cerr
		}
		return catalog.Volume{}, fmt.Errorf("resize volume %q: %w", name, err)
	}
	rec := lv.rec
	rec.SizeBytes = size
	if err := s.cat.Update(func(tx *catalog.Tx) error { return tx.PutVolume(rec) }); err != nil {
		if rerr := rz.Resize(ctx, old); rerr != nil {
			s.log.Error("undo resize after catalog failure", "volume", name, "err", rerr)
		}
		return catalog.Volume{}, fmt.Errorf("record resize of volume %q: %w", name, err)
	}
	lv.rec = rec
	lv.lu.CapacityChanged()
	s.namespacesChangedLocked(name)
	s.log.Info("resized volume", "volume", name, "old_size_bytes", old, "size_bytes", size)
	return rec, nil
}

// SetWriteCache turns a volume's volatile write cache on or off, live and
// persistently. Turning it off flushes first (the engine's contract).
func (s *Service) SetWriteCache(name string, on bool) (catalog.Volume, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	lv, ok := s.volumes[name]
	if !ok {
		return catalog.Volume{}, s.missingLocked(name)
	}
	if lv.rec.WriteCache == on {
		return lv.rec, nil
	}
	rec := lv.rec
	rec.WriteCache = on
	if err := s.cat.Update(func(tx *catalog.Tx) error { return tx.PutVolume(rec) }); err != nil {
		return catalog.Volume{}, err
	}
	// The record is saved here already; the logical unit's SaveWriteCache
	// hook is not called on this path.
	if err := lv.vol.SetWriteCache(on); err != nil {
		// Put the record back so catalog and live state agree.
		if uerr := s.cat.Update(func(tx *catalog.Tx) error { return tx.PutVolume(lv.rec) }); uerr != nil {
			s.log.Error("undo write cache record", "volume", name, "err", uerr)
		}
		return catalog.Volume{}, fmt.Errorf("set write cache of volume %q: %w", name, err)
	}
	lv.rec = rec
	s.log.Info("set write cache", "volume", name, "write_cache", on)
	return rec, nil
}

// readOnlySetter is implemented by engines that can switch read-only live.
type readOnlySetter interface{ SetReadOnly(bool) }

// SetReadOnly makes a volume refuse or accept writes, live and persistently.
func (s *Service) SetReadOnly(name string, ro bool) (catalog.Volume, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	lv, ok := s.volumes[name]
	if !ok {
		return catalog.Volume{}, s.missingLocked(name)
	}
	if lv.rec.ReadOnly == ro {
		return lv.rec, nil
	}
	setter, ok := lv.vol.(readOnlySetter)
	if !ok {
		return catalog.Volume{}, fmt.Errorf("set read-only on volume %q: %w", name, ErrNotSupported)
	}
	rec := lv.rec
	rec.ReadOnly = ro
	if err := s.cat.Update(func(tx *catalog.Tx) error { return tx.PutVolume(rec) }); err != nil {
		return catalog.Volume{}, err
	}
	if ro {
		// Acknowledged writes become durable before the volume stops
		// taking more, so a read-only volume is a stable image.
		if err := lv.vol.Flush(context.Background()); err != nil {
			s.log.Warn("flush before read-only", "volume", name, "err", err)
		}
	}
	setter.SetReadOnly(ro)
	lv.rec = rec
	s.log.Info("set read-only", "volume", name, "read_only", ro)
	return rec, nil
}

// MappedBy returns the IQNs of the targets that map volume name, sorted.
func (s *Service) MappedBy(name string) []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.mappedByLocked(name)
}

// mappedByLocked is MappedBy, never nil; the caller holds s.mu.
func (s *Service) mappedByLocked(name string) []string {
	out := []string{}
	for _, t := range s.targets {
		for _, l := range t.rec.LUNs {
			if l.Volume == name {
				out = append(out, t.rec.IQN)
				break
			}
		}
	}
	sort.Strings(out)
	return out
}

// ImportVolume creates a volume from a raw image read from r. size is the
// image's length when known (-1 otherwise); the volume's size is the image
// length rounded up to the block size. All-zero blocks are skipped, so the
// new data file is as sparse as the image allows. The copy runs without
// holding the service lock; only the final rename and registration do.
func (s *Service) ImportVolume(ctx context.Context, spec VolumeSpec, r io.Reader, size int64) (catalog.Volume, error) {
	// Validate everything but the size, which is known after the copy.
	probe := spec
	probe.SizeBytes = int64(max(spec.BlockSize, 512))
	if err := probe.validate(s.defaultBackend); err != nil {
		return catalog.Volume{}, err
	}
	if probe.Backend == string(engine.BackendBlock) {
		return catalog.Volume{}, invalid("backend", "an image is imported into a file or mmap volume, not a block device")
	}
	spec.BlockSize, spec.Backend = probe.BlockSize, probe.Backend
	if size > MaxVolumeSize {
		return catalog.Volume{}, invalid("size_bytes", "image of %d bytes is larger than the maximum volume size %d", size, int64(MaxVolumeSize))
	}
	if _, err := s.Volume(spec.Name); err == nil {
		return catalog.Volume{}, fmt.Errorf("volume %q: %w", spec.Name, ErrExists)
	}

	im, err := engine.NewImport(s.newFiles(spec.Name), spec.Name)
	if err != nil {
		return catalog.Volume{}, fmt.Errorf("import volume %q: %w", spec.Name, err)
	}
	defer im.Abort()
	tmp := im.File
	n, err := sparseCopy(ctx, tmp, r, spec.BlockSize)
	if err != nil {
		return catalog.Volume{}, fmt.Errorf("import volume %q: %w", spec.Name, err)
	}
	if size >= 0 && n != size {
		return catalog.Volume{}, fmt.Errorf("import volume %q: read %d bytes, expected %d: %w", spec.Name, n, size, io.ErrUnexpectedEOF)
	}
	if n == 0 {
		return catalog.Volume{}, invalid("size_bytes", "the image is empty")
	}
	bs := int64(spec.BlockSize)
	total := (n + bs - 1) / bs * bs
	if total > MaxVolumeSize {
		return catalog.Volume{}, invalid("size_bytes", "image of %d bytes is larger than the maximum volume size %d", n, int64(MaxVolumeSize))
	}
	if err := tmp.Truncate(total); err != nil {
		if cerr := clientFault(err); cerr != err {
			return catalog.Volume{}, cerr
		}
		return catalog.Volume{}, fmt.Errorf("import volume %q: %w", spec.Name, err)
	}
	if err := tmp.Sync(); err != nil {
		return catalog.Volume{}, fmt.Errorf("import volume %q: %w", spec.Name, err)
	}
	if err := tmp.Close(); err != nil {
		return catalog.Volume{}, fmt.Errorf("import volume %q: %w", spec.Name, err)
	}

	spec.SizeBytes = total
	rec, err := s.newRecord(spec)
	if err != nil {
		return catalog.Volume{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkNewLocked(rec); err != nil {
		return catalog.Volume{}, err
	}
	if err := im.Commit(); err != nil {
		return catalog.Volume{}, fmt.Errorf("import volume %q: %w", rec.Name, err)
	}
	if rec, err = s.registerLocked(rec, false); err != nil {
		return catalog.Volume{}, err
	}
	s.log.Info("imported volume", "volume", rec.Name, "size_bytes", rec.SizeBytes, "image_bytes", n, "block_size", rec.BlockSize)
	return rec, nil
}

// ImportPath creates a volume from a raw image on the daemon's machine: a
// regular file in volume.import_dirs or a block device matching
// volume.block_devices (read up to its size, and only if nobody has it
// mounted or open exclusively). Everything else is refused with a
// HostPathError or FieldError naming "path".
func (s *Service) ImportPath(ctx context.Context, spec VolumeSpec, path string) (catalog.Volume, error) {
	f, size, err := s.openImportSource(path)
	if err != nil {
		return catalog.Volume{}, err
	}
	defer f.Close()
	return s.ImportVolume(ctx, spec, io.LimitReader(f, size), size)
}

// sparseCopy copies r to the start of f block by block, seeking over
// all-zero blocks instead of writing them, and returns the bytes read.
func sparseCopy(ctx context.Context, f *os.File, r io.Reader, blockSize int) (int64, error) {
	const chunk = 1 << 20
	buf := make([]byte, chunk)
	zero := make([]byte, blockSize)
	var off int64
	for {
		if err := ctx.Err(); err != nil {
			return off, err
		}
		n, rerr := io.ReadFull(r, buf)
		for i := 0; i < n; i += blockSize {
			end := min(i+blockSize, n)
			b := buf[i:end]
			if bytes.Equal(b, zero[:len(b)]) {
				continue
			}
			if _, err := f.WriteAt(b, off+int64(i)); err != nil {
				return off, err
			}
		}
		off += int64(n)
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			return off, nil
		}
		if rerr != nil {
			return off, rerr
		}
	}
}

// Minimum and maximum CHAP secret lengths. RFC 3720 §8.2.1 asks for secrets
// of at least 12 bytes when the link is not otherwise protected (initiators
// such as open-iscsi refuse shorter ones); 255 keeps the value inside one
// text key of any sane length.
const (
	MinCHAPSecret = 12
	MaxCHAPSecret = 255
)

// SetCHAP sets (or with nil, removes) a target's CHAP credentials. Once set,
// logins to the target must authenticate with CHAP; with a mutual user and
// secret the target also proves itself to the initiator.
func (s *Service) SetCHAP(iqn string, c *catalog.CHAP) error {
	c, err := validCHAP(c)
	if err != nil {
		return err
	}
	rec, err := s.updateTarget(iqn, func(rec *catalog.Target) error { rec.CHAP = c; return nil })
	if err != nil {
		return err
	}
	s.log.Info("set CHAP", "target", rec.IQN, "enabled", c != nil, "mutual", c != nil && c.MutualUser != "")
	s.accessChanged()
	return nil
}

// validCHAP checks credentials and returns a copy of them (nil for nil).
func validCHAP(c *catalog.CHAP) (*catalog.CHAP, error) {
	if c != nil {
		if c.User == "" || strings.ContainsAny(c.User, "\x00\r\n") || len(c.User) > 255 {
			return nil, invalid("user", "must be 1 to 255 bytes of printable text")
		}
		if n := len(c.Secret); n < MinCHAPSecret || n > MaxCHAPSecret {
			return nil, invalid("secret", "must be %d to %d bytes (RFC 3720 §8.2.1)", MinCHAPSecret, MaxCHAPSecret)
		}
		if c.MutualUser != "" || c.MutualSecret != "" {
			if c.MutualUser == "" || strings.ContainsAny(c.MutualUser, "\x00\r\n") || len(c.MutualUser) > 255 {
				return nil, invalid("mutual_user", "must be 1 to 255 bytes of printable text when mutual CHAP is set")
			}
			if n := len(c.MutualSecret); n < MinCHAPSecret || n > MaxCHAPSecret {
				return nil, invalid("mutual_secret", "must be %d to %d bytes (RFC 3720 §8.2.1)", MinCHAPSecret, MaxCHAPSecret)
			}
			if c.MutualSecret == c.Secret {
				return nil, invalid("mutual_secret", "must differ from secret (RFC 3720 §8.2.1)")
			}
		}
		cc := *c
		c = &cc
	}
	return c, nil
}
