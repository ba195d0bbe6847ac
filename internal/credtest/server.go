// Package credtest is a faithful test double of an ECS container credential
// server (CredProxy, aws-vault's ECS server and the ECS agent answer the same
// way). It backs the demo, the integration tests and the benchmarks.
package credtest

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Server answers GET <path> with credentials when the Authorization header
// matches the token (if one is configured), and /health with 200.
type Server struct {
	// Path serves credentials; "" serves them on every path but /health.
	Path string
	// Token, or TokenFile re-read on every request (rotation); both empty
	// means no authorization is required.
	Token     string
	TokenFile string
	// Expiry is how long issued credentials are valid.
	Expiry time.Duration
	// AccountID and RoleArn are optional fields of the answer.
	AccountID, RoleArn string
	// Delay holds every credential answer this long (drain tests).
	Delay time.Duration
	// Log receives one JSON line per credential request (never a token:
	// only whether it matched and a short hash).
	Log func(Record)

	seq atomic.Int64
	mu  sync.Mutex
}

// Credentials is the JSON body of a successful answer.
type Credentials struct {
	AccessKeyId     string
	SecretAccessKey string
	Token           string
	Expiration      string
	AccountId       string `json:",omitempty"`
	RoleArn         string `json:",omitempty"`
}

// Record describes one request the server saw.
type Record struct {
	Seq      int64  `json:"seq"`
	Path     string `json:"path"`
	Auth     string `json:"auth"` // ok, missing, wrong, none-required
	AuthHash string `json:"authHash,omitempty"`
	Status   int    `json:"status"`
	Remote   string `json:"remote"`
	// Expiration of the credentials issued (RFC 3339), so that a test can
	// check exactly what a client obtained.
	Expiration string `json:"expiration,omitempty"`
}

// CredentialsFor returns the credentials the server issues for request
// number seq (1-based), so that tests know exactly what to expect.
func CredentialsFor(seq int64, expiration time.Time, account, role string) Credentials {
	return Credentials{
		AccessKeyId:     fmt.Sprintf("ASIAECSMETATEST%05d", seq),
		SecretAccessKey: fmt.Sprintf("ecsmeta/test/secret/%05d/abcdefghijklmnopqrstuvwxyz", seq),
		Token:           fmt.Sprintf("ecsmeta-test-session-token-%05d-", seq) + strings.Repeat("x", 600),
		Expiration:      expiration.UTC().Format(time.RFC3339),
		AccountId:       account,
		RoleArn:         role,
	}
}

// HashToken is how the log identifies a token without revealing it.
func HashToken(tok string) string {
	sum := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(sum[:4])
}

func (s *Server) wantToken() (string, error) {
	if s.TokenFile != "" {
		b, err := os.ReadFile(s.TokenFile)
		if err != nil {
			return "", err
		}
		return strings.TrimSpace(string(b)), nil
	}
	return s.Token, nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// ServeHTTP implements the protocol.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/health" {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
		return
	}
	rec := Record{Path: r.URL.Path, Remote: r.RemoteAddr}
	defer func() {
		if s.Log != nil {
			s.mu.Lock()
			s.Log(rec)
			s.mu.Unlock()
		}
	}()
	if r.Method != http.MethodGet {
		rec.Status = http.StatusMethodNotAllowed
		writeJSON(w, rec.Status, map[string]string{"code": "MethodNotAllowed", "message": "use GET"})
		return
	}
	if s.Path != "" && r.URL.Path != s.Path {
		rec.Status = http.StatusNotFound
		writeJSON(w, rec.Status, map[string]string{"code": "NotFound", "message": "no credentials at " + r.URL.Path})
		return
	}
	want, err := s.wantToken()
	if err != nil {
		rec.Status = http.StatusInternalServerError
		writeJSON(w, rec.Status, map[string]string{"code": "InternalError", "message": "cannot read token file"})
		return
	}
	got := r.Header.Get("Authorization")
	if got != "" {
		rec.AuthHash = HashToken(got)
	}
	switch {
	case want == "":
		rec.Auth = "none-required"
	case got == "":
		rec.Auth, rec.Status = "missing", http.StatusUnauthorized
		writeJSON(w, rec.Status, map[string]string{"code": "Unauthorized", "message": "missing Authorization header"})
		return
	case subtle.ConstantTimeCompare([]byte(got), []byte(want)) != 1:
		rec.Auth, rec.Status = "wrong", http.StatusForbidden
		writeJSON(w, rec.Status, map[string]string{"code": "AccessDenied", "message": "invalid Authorization token"})
		return
	default:
		rec.Auth = "ok"
	}
	if s.Delay > 0 {
		time.Sleep(s.Delay)
	}
	rec.Seq = s.seq.Add(1)
	rec.Status = http.StatusOK
	expiry := s.Expiry
	if expiry == 0 {
		expiry = time.Hour
	}
	creds := CredentialsFor(rec.Seq, time.Now().Add(expiry), s.AccountID, s.RoleArn)
	rec.Expiration = creds.Expiration
	writeJSON(w, rec.Status, creds)
}
