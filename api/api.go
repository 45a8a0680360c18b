// Package api is Anvil's REST API (echo v4) under /api/v1. It changes live
// state only through the service package, the same objects start-up uses,
// so every change is applied to the running daemon and persisted in the
// catalog in one step.
//
// Every route except GET /api/v1/health and the web UI's static files needs
// "Authorization: Bearer <token>". Errors are JSON objects
// {"error": "...", "field": "..."} where field names the offending request
// field when there is one.
package api

import (
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/anvilproject/anvil/service"
)

// Sessions is the front end's session management
// (service.ISCSISessions over the iSCSI portal).
type Sessions = service.Sessions

// Options configure New.
type Options struct {
	// Service is the daemon's live state.
	Service *service.Service
	// Sessions is the iSCSI portal; nil reports no sessions.
	Sessions Sessions
	// NVMe is the NVMe/TCP front end's controllers; nil reports none.
	NVMe NVMeControllers
	// Token is the bearer token every protected route requires. It must
	// not be empty.
	Token string
	// Logger receives request errors; nil means slog.Default().
	Logger *slog.Logger
	// UI serves the web UI at / (web.Handler()); nil serves no UI, and
	// paths outside the API are 404s.
	UI http.Handler
	// AuthFailuresPerMinute is how many failed authentications one client
	// address may make per minute before it gets 429 for a while; 0 means
	// DefaultAuthFailuresPerMinute.
	AuthFailuresPerMinute int
}

// maxJSONBody bounds a JSON request body; no legitimate request comes near.
const maxJSONBody = 1 << 20

type server struct {
	svc      *service.Service
	sessions Sessions
	nvme     NVMeControllers
	// tokenSum is the SHA-256 of the bearer token: requests are checked by
	// digest, so the server keeps no copy of the token itself.
	tokenSum [sha256.Size]byte
	log      *slog.Logger
	metrics  *metrics
	started  time.Time
	authLim  *authLimiter
}

// New returns the API's HTTP handler: the REST API under /api/v1, the
// Prometheus metrics at /metrics and the web UI at /.
func New(o Options) http.Handler { return newEcho(o) }

// publicPaths need no token: load balancers and container health checks
// probe health, and the UI must load before the operator has logged in.
func isPublic(path string) bool {
	return path == "/api/v1/health" || !(strings.HasPrefix(path, "/api/") || path == "/metrics")
}

func newEcho(o Options) *echo.Echo {
	if o.Token == "" {
		panic("api: empty token")
	}
	s := &server{
		svc:      o.Service,
		sessions: o.Sessions,
		nvme:     o.NVMe,
		tokenSum: sha256.Sum256([]byte(o.Token)),
		log:      o.Logger,
		started:  time.Now(),
		authLim:  newAuthLimiter(o.AuthFailuresPerMinute),
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.sessions == nil {
		s.sessions = noSessions{}
	}
	if s.nvme == nil {
		s.nvme = noNVMe{}
	}
	s.metrics = newMetrics(s)

	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = s.handleError
	// A handler panic is a bug: answer 500 JSON for that request only and
	// log it with its stack, rather than dropping the connection.
	e.Use(s.recover, securityHeaders, s.instrument, s.auth, checkQuery)

	v1 := e.Group("/api/v1")
	v1.GET("/health", s.health)
	v1.GET("/openapi.json", s.openAPI)

	v1.GET("/volumes", s.listVolumes)
	v1.POST("/volumes", s.createVolume)
	v1.POST("/volumes/import", s.importVolume)
	v1.GET("/volumes/:name", s.getVolume)
	v1.PATCH("/volumes/:name", s.patchVolume)
	v1.DELETE("/volumes/:name", s.deleteVolume)
	v1.PUT("/volumes/:name/faults", s.setFaults)
	v1.POST("/volumes/:name/clear-error", s.clearError)
	v1.POST("/volumes/:name/recheck", s.recheck)

	v1.GET("/targets", s.listTargets)
	v1.POST("/targets", s.createTarget)
	v1.GET("/targets/:iqn", s.getTarget)
	v1.DELETE("/targets/:iqn", s.deleteTarget)
	v1.POST("/targets/:iqn/luns", s.mapLUN)
	v1.DELETE("/targets/:iqn/luns/:lun", s.unmapLUN)
	v1.PUT("/targets/:iqn/acl", s.setACL)
	v1.PUT("/targets/:iqn/chap", s.setCHAP)
	v1.DELETE("/targets/:iqn/chap", s.deleteCHAP)
	v1.PUT("/targets/:iqn/initiators/:initiator/chap", s.setInitiatorCHAP)
	v1.DELETE("/targets/:iqn/initiators/:initiator/chap", s.deleteInitiatorCHAP)
	v1.GET("/discovery/chap", s.getDiscoveryCHAP)
	v1.PUT("/discovery/chap", s.setDiscoveryCHAP)
	v1.DELETE("/discovery/chap", s.deleteDiscoveryCHAP)

	v1.GET("/subsystems", s.listSubsystems)
	v1.POST("/subsystems", s.createSubsystem)
	v1.GET("/subsystems/:nqn", s.getSubsystem)
	v1.DELETE("/subsystems/:nqn", s.deleteSubsystem)
	v1.POST("/subsystems/:nqn/namespaces", s.addNamespace)
	v1.DELETE("/subsystems/:nqn/namespaces/:nsid", s.removeNamespace)
	v1.PUT("/subsystems/:nqn/hosts", s.setHosts)
	v1.GET("/controllers", s.listControllers)

	v1.GET("/sessions", s.listSessions)
	v1.DELETE("/sessions/:tsih", s.logoutSession)

	e.GET("/metrics", echo.WrapHandler(s.metrics.handler()))

	uiHandler := func(echo.Context) error { return echo.ErrNotFound }
	if o.UI != nil {
		uiHandler = echo.WrapHandler(o.UI)
	}
	ui := func(c echo.Context) error {
		// Unknown API paths are JSON 404s, not the UI's index page.
		if strings.HasPrefix(c.Request().URL.Path, "/api/") {
			return echo.ErrNotFound
		}
		return uiHandler(c)
	}
	e.GET("/*", ui)
	e.HEAD("/*", ui)
	return e
}

func (s *server) recover(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) (err error) {
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				s.log.Error("API handler panic", "method", c.Request().Method, "path", c.Request().URL.Path, "panic", p, "stack", string(debug.Stack()))
				err = &apiError{status: http.StatusInternalServerError, msg: fmt.Sprintf("internal error: %v", p)}
			}
		}()
		return next(c)
	}
}

// auth enforces the bearer token on every non-public path. The comparison
// is constant-time so the token cannot be guessed byte by byte; failures
// are logged and limited per client address (authLimiter).
func (s *server) auth(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		r := c.Request()
		if isPublic(r.URL.Path) {
			return next(c)
		}
		addr, now := clientAddr(r), time.Now()
		if wait := s.authLim.blocked(addr, now); wait > 0 {
			return tooManyFailures(c, wait)
		}
		h := r.Header.Get(echo.HeaderAuthorization)
		tok, ok := strings.CutPrefix(h, "Bearer ")
		sum := sha256.Sum256([]byte(strings.TrimSpace(tok)))
		if !ok || subtle.ConstantTimeCompare(sum[:], s.tokenSum[:]) != 1 {
			reason := "invalid token"
			if h == "" {
				reason = "no Authorization header"
			} else if !ok {
				reason = "not a bearer token"
			}
			s.log.Warn("API authentication failed", "client", addr, "method", r.Method, "path", r.URL.Path, "reason", reason)
			if s.authLim.fail(addr, now) {
				s.log.Warn("too many failed API authentications; refusing the client for a while", "client", addr, "for", authBlock)
			}
			c.Response().Header().Set(echo.HeaderWWWAuthenticate, `Bearer realm="anvil"`)
			return &apiError{status: http.StatusUnauthorized, msg: "missing or invalid bearer token"}
		}
		return next(c)
	}
}

func (s *server) health(c echo.Context) error {
	return c.JSON(http.StatusOK, map[string]any{
		"status":         "ok",
		"volumes":        len(s.svc.Volumes()),
		"targets":        len(s.svc.ListTargets()),
		"sessions":       len(s.sessions.Sessions()),
		"uptime_seconds": int64(time.Since(s.started).Seconds()),
	})
}

type noSessions struct{}

func (noSessions) Sessions() []service.SessionInfo { return nil }
func (noSessions) Logout(tsih uint16) error {
	return fmt.Errorf("session %d: %w", tsih, service.ErrNotFound)
}

// queryParams lists the query parameters each API route accepts; any other
// parameter is refused, as unknown JSON fields are, so that a typo such as
// ?forse=true fails loudly instead of being ignored.
var queryParams = map[string][]string{
	"DELETE /api/v1/volumes/:name": {"force"},
	"POST /api/v1/volumes/import":  {"name", "block_size", "write_cache", "read_only"},
	"GET /api/v1/sessions":         {"target"},
}

func checkQuery(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if !strings.HasPrefix(c.Path(), "/api/") {
			return next(c)
		}
		allowed := queryParams[c.Request().Method+" "+c.Path()]
	params:
		for k := range c.QueryParams() {
			for _, a := range allowed {
				if k == a {
					continue params
				}
			}
			return badRequest(k, "unknown query parameter %q", k)
		}
		return next(c)
	}
}
