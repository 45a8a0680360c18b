package api

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/anvilproject/anvil/service"
)

// Volume is a volume as the API shows it: its settings, the targets that
// map it and, when it is open, live I/O statistics.
type Volume struct {
	Name      string `json:"name"`
	SizeBytes int64  `json:"size_bytes"`
	BlockSize int    `json:"block_size"`
	Thin      bool   `json:"thin"`
	// Backend is "file", "mmap" or "block".
	Backend string `json:"backend"`
	// Path is the volume's data file or block device.
	Path       string    `json:"path"`
	WriteCache bool      `json:"write_cache"`
	ReadOnly   bool      `json:"read_only"`
	Serial     string    `json:"serial"`
	NAA        string    `json:"naa"`
	Created    time.Time `json:"created"`

	MappedBy []string `json:"mapped_by"`
	// Error says why the engine froze the volume read-only after a failed
	// commit; POST .../clear-error returns it to service.
	Error string       `json:"error,omitempty"`
	Stats *VolumeStats `json:"stats,omitempty"`
	// State is "online", "degraded" (served read-only: recovery could not
	// tell whether the newest epoch was committed) or "offline" (its files
	// do not match the catalog; not served until POST .../recheck
	// succeeds or the volume is deleted).
	State string `json:"state"`
	// Reason says why the volume is degraded or offline.
	Reason string `json:"reason,omitempty"`
	// Warnings come with a create or resize that is allowed but risky,
	// such as thin volumes over-committing their file system.
	Warnings []string `json:"warnings,omitempty"`
}

// volumeView renders one status snapshot.
func volumeView(st service.VolumeStatus) Volume {
	r := st.Record
	return Volume{
		Name: r.Name, SizeBytes: r.SizeBytes, BlockSize: r.BlockSize, Thin: r.Thin,
		Backend: r.Backend, Path: r.Path, WriteCache: r.WriteCache, ReadOnly: r.ReadOnly,
		Serial: r.Serial, NAA: r.NAA, Created: r.Created,
		MappedBy: st.MappedBy, Error: st.Error, Stats: statsView(st),
		State: st.State, Reason: st.Reason,
	}
}

// changedView answers a change that returned rec with the volume's status
// afterwards; a volume deleted meanwhile is shown as the change left it.
func (s *server) changedView(rec service.VolumeRecord) Volume {
	st, err := s.svc.VolumeStatus(rec.Name)
	if err != nil {
		return volumeView(service.VolumeStatus{Record: rec, MappedBy: []string{}})
	}
	st.Record = rec
	return volumeView(st)
}

// volumeOf answers a change to volume name with its status afterwards.
func (s *server) volumeOf(name string) (Volume, error) {
	st, err := s.svc.VolumeStatus(name)
	if err != nil {
		return Volume{}, err
	}
	return volumeView(st), nil
}

func (s *server) listVolumes(c echo.Context) error {
	sts := s.svc.VolumeStatuses()
	out := make([]Volume, 0, len(sts))
	for _, st := range sts {
		out = append(out, volumeView(st))
	}
	return c.JSON(http.StatusOK, out)
}

func (s *server) getVolume(c echo.Context) error {
	v, err := s.volumeOf(c.Param("name"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, v)
}

// CreateVolumeRequest is the body of POST /api/v1/volumes.
type CreateVolumeRequest struct {
	Name       string `json:"name"`
	SizeBytes  int64  `json:"size_bytes"`
	BlockSize  int    `json:"block_size,omitempty"`
	WriteCache *bool  `json:"write_cache,omitempty"`
	ReadOnly   bool   `json:"read_only,omitempty"`
	Backend    string `json:"backend,omitempty"`
	Device     string `json:"device,omitempty"`
}

func (s *server) createVolume(c echo.Context) error {
	var req CreateVolumeRequest
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	rec, err := s.svc.CreateVolume(c.Request().Context(), service.VolumeSpec{
		Name:       req.Name,
		SizeBytes:  req.SizeBytes,
		BlockSize:  req.BlockSize,
		WriteCache: req.WriteCache,
		ReadOnly:   req.ReadOnly,
		Backend:    req.Backend,
		Device:     req.Device,
	})
	if err != nil {
		return err
	}
	v := s.changedView(rec)
	v.Warnings = s.svc.SpaceWarnings()
	return c.JSON(http.StatusCreated, v)
}

// PatchVolumeRequest is the body of PATCH /api/v1/volumes/{name}. Absent
// fields are left unchanged; at least one must be present.
type PatchVolumeRequest struct {
	SizeBytes  *int64 `json:"size_bytes,omitempty"`
	WriteCache *bool  `json:"write_cache,omitempty"`
	ReadOnly   *bool  `json:"read_only,omitempty"`
}

func (s *server) patchVolume(c echo.Context) error {
	name := c.Param("name")
	var req PatchVolumeRequest
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	if req.SizeBytes == nil && req.WriteCache == nil && req.ReadOnly == nil {
		return badRequest("", "nothing to change: give size_bytes, write_cache or read_only")
	}
	rec, err := s.svc.Volume(name)
	if err != nil {
		return err
	}
	// All or nothing: the size is checked before anything changes, the
	// cheap reversible settings go first, and they are put back if the
	// resize itself fails.
	if req.SizeBytes != nil {
		if err := s.svc.CheckResize(name, *req.SizeBytes); err != nil {
			return err
		}
	}
	before := rec
	revert := func() {
		if req.WriteCache != nil && before.WriteCache != *req.WriteCache {
			if _, err := s.svc.SetWriteCache(name, before.WriteCache); err != nil {
				s.log.Error("revert write cache after a failed PATCH", "volume", name, "err", err)
			}
		}
		if req.ReadOnly != nil && before.ReadOnly != *req.ReadOnly {
			if _, err := s.svc.SetReadOnly(name, before.ReadOnly); err != nil {
				s.log.Error("revert read-only after a failed PATCH", "volume", name, "err", err)
			}
		}
	}
	if req.WriteCache != nil {
		if rec, err = s.svc.SetWriteCache(name, *req.WriteCache); err != nil {
			return err
		}
	}
	if req.ReadOnly != nil {
		if rec, err = s.svc.SetReadOnly(name, *req.ReadOnly); err != nil {
			revert()
			return err
		}
	}
	if req.SizeBytes != nil {
		if rec, err = s.svc.ResizeVolume(c.Request().Context(), name, *req.SizeBytes); err != nil {
			revert()
			return err
		}
	}
	v := s.changedView(rec)
	if req.SizeBytes != nil {
		v.Warnings = s.svc.SpaceWarnings()
	}
	return c.JSON(http.StatusOK, v)
}

func (s *server) deleteVolume(c echo.Context) error {
	force, err := boolQuery(c, "force")
	if err != nil {
		return err
	}
	if err := s.svc.DeleteVolume(c.Param("name"), force); err != nil {
		return err
	}
	return c.NoContent(http.StatusNoContent)
}

// ImportPathRequest is the JSON body of POST /api/v1/volumes/import: a raw
// image already on the daemon's machine, copied into a new volume.
type ImportPathRequest struct {
	Name       string `json:"name"`
	Path       string `json:"path"`
	BlockSize  int    `json:"block_size,omitempty"`
	WriteCache *bool  `json:"write_cache,omitempty"`
	ReadOnly   bool   `json:"read_only,omitempty"`
}

// importVolume creates a volume from a raw image: either uploaded as the
// request body (Content-Type application/octet-stream, parameters in the
// query) or, with a JSON body, read from a path on the daemon's machine.
func (s *server) importVolume(c echo.Context) error {
	r := c.Request()
	ct := r.Header.Get(echo.HeaderContentType)
	if strings.HasPrefix(ct, echo.MIMEApplicationJSON) {
		var req ImportPathRequest
		if err := decodeJSON(c, &req); err != nil {
			return err
		}
		rec, err := s.svc.ImportPath(r.Context(), service.VolumeSpec{
			Name: req.Name, BlockSize: req.BlockSize, WriteCache: req.WriteCache, ReadOnly: req.ReadOnly,
		}, req.Path)
		if err != nil {
			return err
		}
		return c.JSON(http.StatusCreated, s.changedView(rec))
	}
	if ct != echo.MIMEOctetStream {
		return &apiError{status: http.StatusUnsupportedMediaType, msg: "import wants application/octet-stream (the image as the body) or application/json (a path on the daemon's machine)"}
	}
	q := c.QueryParams() // checkQuery has refused unknown parameters
	spec := service.VolumeSpec{Name: q.Get("name")}
	if v := q.Get("block_size"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return badRequest("block_size", "%q is not an integer", v)
		}
		spec.BlockSize = n
	}
	if q.Has("write_cache") {
		wc, err := boolQuery(c, "write_cache")
		if err != nil {
			return err
		}
		spec.WriteCache = &wc
	}
	ro, err := boolQuery(c, "read_only")
	if err != nil {
		return err
	}
	spec.ReadOnly = ro
	rec, err := s.svc.ImportVolume(r.Context(), spec, r.Body, r.ContentLength)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, s.changedView(rec))
}

// boolQuery parses an optional boolean query parameter.
func boolQuery(c echo.Context, name string) (bool, error) {
	v := c.QueryParam(name)
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, badRequest(name, "%q is not a boolean", v)
	}
	return b, nil
}
