package api

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// TokenFile is the name of the token file in the data directory.
const TokenFile = "api.token"

// ResolveToken returns the API token. A configured token (ANVIL_API_TOKEN
// or the api.token setting) wins and nothing is written. Otherwise the
// token is read from DIR/api.token, which is created with a random 256-bit
// token and mode 0600 the first time.
func ResolveToken(dataDir, configured string) (token string, created bool, err error) {
	if t := strings.TrimSpace(configured); t != "" {
		return t, false, nil
	}
	path := filepath.Join(dataDir, TokenFile)
	b, err := os.ReadFile(path)
	if err == nil {
		if t := strings.TrimSpace(string(b)); t != "" {
			return t, false, nil
		}
		return "", false, fmt.Errorf("API token file %s is empty; delete it to have a new token generated", path)
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", false, fmt.Errorf("read API token: %w", err)
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return "", false, fmt.Errorf("generate API token: %w", err)
	}
	token = hex.EncodeToString(raw)
	if err := os.MkdirAll(dataDir, 0o750); err != nil {
		return "", false, fmt.Errorf("write API token: %w", err)
	}
	// O_EXCL: two daemons racing on one data directory must not end up
	// with different tokens.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", false, fmt.Errorf("write API token: %w", err)
	}
	if _, err := f.WriteString(token + "\n"); err != nil {
		f.Close()
		return "", false, fmt.Errorf("write API token: %w", err)
	}
	if err := f.Close(); err != nil {
		return "", false, fmt.Errorf("write API token: %w", err)
	}
	return token, true, nil
}
