package pgtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// TLS for a local cluster. With WithTLS, StartLocal makes, in Go, a
// throwaway certificate authority and a server certificate it signs, and
// turns TLS on:
//
//	<baseDir>/ca.crt           the CA's certificate: sslrootcert for clients (Server.CAFile)
//	<baseDir>/wrong-ca.crt     an unrelated CA with the same name (Server.WrongCAFile)
//	<dataDir>/server.crt       the server's certificate: DNS localhost, IP 127.0.0.1
//	<dataDir>/server.key       its key, mode 0600, owned by the server's OS user
//
// The CAs' private keys are never written anywhere. Every key is ECDSA
// P-256. The server still accepts connections without TLS (pg_hba.conf
// has "host" lines, not "hostssl"), so the harness's own connections and
// sslmode=disable keep working; pg_stat_ssl tells which connections use
// TLS.

// tlsFiles are the client-side files of a cluster that serves TLS.
type tlsFiles struct {
	caFile, wrongCAFile string
}

// WithTLS makes StartLocal serve TLS (ssl=on) with a server certificate for
// DNS "localhost" and IP 127.0.0.1, signed by a CA made for this cluster
// alone. Connect with sslmode=verify-full and sslrootcert=Server.CAFile();
// for verify-full by name, use WithHost("localhost"). Server.WrongCAFile()
// is a CA that did not sign it, for tests that verification can fail.
//
// WithTLS is for StartLocal only: a server from WARMPG_TEST_DATABASE_URL
// ignores it, and its CAFile is "".
func WithTLS() Option { return func(c *config) { c.tls = true } }

// CAFile returns the path of the PEM certificate of the CA that signed the
// server's certificate, for sslrootcert; "" if the server was not started
// by StartLocal with WithTLS.
func (s *Server) CAFile() string {
	if s.local == nil || s.local.tls == nil {
		return ""
	}
	return s.local.tls.caFile
}

// WrongCAFile returns the path of the PEM certificate of a CA that did not
// sign the server's certificate (it has the same subject name as the right
// one, so only the signature tells them apart): as sslrootcert, a verifying
// client must refuse the server. "" if the server was not started by
// StartLocal with WithTLS.
func (s *Server) WrongCAFile() string {
	if s.local == nil || s.local.tls == nil {
		return ""
	}
	return s.local.tls.wrongCAFile
}

// WithHost returns a copy of s that connects to host instead of s.Host —
// "localhost" for sslmode=verify-full by name. As for WithUser, the copy
// shares the server and its Close does nothing.
func (s *Server) WithHost(host string) *Server {
	c := s.WithUser(s.User, s.Password)
	c.Host = host
	return c
}

// tlsCAName is the subject name of both CAs.
const tlsCAName = "warmpg pgtest throwaway CA"

// setupTLS writes the CAs and the server's certificate and key, and adds
// the settings that turn TLS on before cfg's own, which may override them.
func (c *cluster) setupTLS(cfg *config) error {
	notBefore := time.Now().Add(-time.Hour) // tolerate a clock a little behind
	notAfter := time.Now().Add(7 * 24 * time.Hour)

	caKey, caCert, caPEM, err := newCA(notBefore, notAfter)
	if err != nil {
		return err
	}
	_, _, wrongPEM, err := newCA(notBefore, notAfter)
	if err != nil {
		return err
	}
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("pgtest: tls: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("pgtest: tls: server certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(srvKey)
	if err != nil {
		return fmt.Errorf("pgtest: tls: %w", err)
	}

	certPath := filepath.Join(c.dataDir, "server.crt")
	keyPath := filepath.Join(c.dataDir, "server.key")
	// writeFile: mode 0600, owned by the server's OS user, which the
	// server demands of its key.
	if err := c.writeFile(certPath, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))); err != nil {
		return err
	}
	if err := c.writeFile(keyPath, string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))); err != nil {
		return err
	}
	files := &tlsFiles{
		caFile:      filepath.Join(c.baseDir, "ca.crt"),
		wrongCAFile: filepath.Join(c.baseDir, "wrong-ca.crt"),
	}
	// Read by clients, who may be another OS user than the server's.
	for path, content := range map[string][]byte{files.caFile: caPEM, files.wrongCAFile: wrongPEM} {
		if err := os.WriteFile(path, content, 0o644); err != nil {
			return fmt.Errorf("pgtest: tls: %w", err)
		}
	}
	cfg.settings = append([]param{
		{"ssl", "on"},
		{"ssl_cert_file", quoteConf(certPath)},
		{"ssl_key_file", quoteConf(keyPath)},
	}, cfg.settings...)
	c.tls = files
	return nil
}

// newCA makes a self-signed CA and returns its key, its certificate and
// the certificate in PEM.
func newCA(notBefore, notAfter time.Time) (*ecdsa.PrivateKey, *x509.Certificate, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("pgtest: tls: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: tlsCAName},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("pgtest: tls: CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("pgtest: tls: %w", err)
	}
	return key, cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

func randomSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("pgtest: tls: serial: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil // positive, never 0
}
