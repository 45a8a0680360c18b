package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/anvilproject/anvil/service"
)

// ErrorBody is the JSON every failed request answers with.
type ErrorBody struct {
	// Error is a human-readable message.
	Error string `json:"error"`
	// Field names the request field at fault, when there is one.
	Field string `json:"field,omitempty"`
}

// apiError is an error with its HTTP status and optional field.
type apiError struct {
	status int
	field  string
	msg    string
}

func (e *apiError) Error() string { return e.msg }

func badRequest(field, format string, args ...any) error {
	return &apiError{status: http.StatusBadRequest, field: field, msg: fmt.Sprintf(format, args...)}
}

// statusOf maps an error from the service layer to a status code and field.
func statusOf(err error) (status int, field string) {
	var ae *apiError
	var fe *service.FieldError
	var he *echo.HTTPError
	var hp *service.HostPathError
	switch {
	case errors.As(err, &ae):
		return ae.status, ae.field
	case errors.As(err, &hp) && errors.Is(err, service.ErrInUse):
		return http.StatusConflict, hp.Field
	case errors.As(err, &hp):
		return http.StatusForbidden, hp.Field
	case errors.As(err, &fe):
		return http.StatusBadRequest, fe.Field
	case errors.Is(err, service.ErrNotFound):
		return http.StatusNotFound, ""
	case errors.Is(err, service.ErrExists), errors.Is(err, service.ErrInUse),
		errors.Is(err, service.ErrOffline), errors.Is(err, service.ErrDegraded),
		errors.Is(err, service.ErrNoSpace):
		return http.StatusConflict, ""
	case errors.Is(err, service.ErrNotSupported):
		return http.StatusUnprocessableEntity, ""
	case errors.Is(err, service.ErrReadOnly):
		// A read-only or frozen volume refuses the change until the
		// operator turns read_only off or clears the error.
		return http.StatusConflict, ""
	case errors.Is(err, service.ErrMedium):
		// The backing store still fails: retrying later may work.
		return http.StatusServiceUnavailable, ""
	case errors.As(err, &he):
		return he.Code, ""
	}
	return http.StatusInternalServerError, ""
}

// handleError is echo's error handler: every error becomes an ErrorBody.
// Server errors are logged with the request; their detail is still
// returned, since the API's callers are the operators of the daemon.
func (s *server) handleError(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	status, field := statusOf(err)
	msg := err.Error()
	var he *echo.HTTPError
	if errors.As(err, &he) {
		msg = fmt.Sprint(he.Message)
	}
	if status >= 500 {
		s.log.Error("API request failed", "method", c.Request().Method, "path", c.Request().URL.Path, "status", status, "err", err)
	}
	var werr error
	if c.Request().Method == http.MethodHead {
		werr = c.NoContent(status)
	} else {
		werr = c.JSON(status, ErrorBody{Error: msg, Field: field})
	}
	if werr != nil {
		s.log.Warn("writing API error", "err", werr)
	}
}

// decodeJSON decodes the request body into v, rejecting unknown fields,
// trailing data, wrong types and bodies over maxJSONBody, each with a 400
// that names the field when it can.
func decodeJSON(c echo.Context, v any) error {
	r := c.Request()
	if ct := r.Header.Get(echo.HeaderContentType); ct != "" && !strings.HasPrefix(ct, echo.MIMEApplicationJSON) {
		return &apiError{status: http.StatusUnsupportedMediaType, msg: fmt.Sprintf("content type %q: want application/json", ct)}
	}
	dec := json.NewDecoder(io.LimitReader(r.Body, maxJSONBody+1))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonError(err)
	}
	if dec.More() {
		return badRequest("", "request body holds more than one JSON value")
	}
	var extra [1]byte
	if n, _ := dec.Buffered().Read(extra[:]); n > 0 && strings.TrimSpace(string(extra[:n])) != "" {
		return badRequest("", "trailing data after the JSON body")
	}
	return nil
}

func jsonError(err error) error {
	var typeErr *json.UnmarshalTypeError
	var syntaxErr *json.SyntaxError
	switch {
	case errors.Is(err, io.EOF):
		return badRequest("", "request body is empty; a JSON object is required")
	case errors.As(err, &typeErr):
		return badRequest(typeErr.Field, "field %q: expected %s, got JSON %s", typeErr.Field, typeErr.Type, typeErr.Value)
	case errors.As(err, &syntaxErr):
		return badRequest("", "malformed JSON at byte %d: %v", syntaxErr.Offset, err)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		name := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		return badRequest(name, "unknown field %q", name)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return badRequest("", "truncated JSON body")
	}
	return badRequest("", "invalid JSON body: %v", err)
}
