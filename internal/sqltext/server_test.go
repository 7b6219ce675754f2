package sqltext

import (
	"context"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/warmpg/warmpg/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// literals are U&, E'…' and UESCAPE spellings, valid and not, that the
// server's own lexer decides on in TestDecodeAgreesWithServer; random ones
// are added to them there.
var literals = []string{
	`U&'\0072ole'`, `U&'\+000072ole'`, `U&'!0072ole' UESCAPE '!'`, `U&'r\\ole'`, `U&'r!!ole' UESCAPE '!'`,
	`U&'\0072ole' UESCAPE '!'`, `U&'\D83D\DE00'`, `U&'\D83D'`, `U&'\DE00'`, `U&'\D83Dx'`, `U&'\0000'`,
	`U&'\+110000'`, `U&'\+10FFFF'`, `U&'\'`, `U&'\00'`, `U&'\+0000'`, `U&'it''s'`, `U&'a' UESCAPE '+'`,
	`U&'a' UESCAPE 'a'`, `U&'a' UESCAPE 'g'`, `U&'a' UESCAPE ''''`, `U&'a' UESCAPE '"'`, `U&'a' UESCAPE ' '`,
	`U&'a' UESCAPE '!!'`, `U&'a' UESCAPE ''`, `U&'#0041' UESCAPE E'#'`, `U&'#0041' UESCAPE $$#$$`,
	`U&'#0041' UESCAPE $t$#$t$`, `U&'#0041'UESCAPE'#'`, "U&'#0041' /* c */ uescape -- d\n '#'",
	`U&'a' UESCAPE U&'!'`, `U&'a' UESCAPE N'!'`, `U&'\0041' UESCAPE '\'`, `U&'é\00e9'`,
	`U&"\0073et_config"`, `U&"set!005fconfig" UESCAPE '!'`, `U&"pg\005Ftemp"`, `U&""`, `U&"a""b"`,
	`U&"\0000"`, `U&"\D800\DC00"`, `U&"x" UESCAPE`,
	`E'\162ole'`, `E'\x72ole'`, `E'\u0072ole'`, `E'\U00000072ole'`, `E'r\o\le'`, `E'\role'`, `E'r''ole'`,
	`E'\x74rue'`, `E'\164'`, `E'\u00'`, `E'\uD83D'`, `E'\uD83D\uDE00'`, `E'\uDE00'`, `E'\000'`, `E'\x00'`,
	`E'\xff'`, `E'\xc3\xa9'`, `E'\777'`, `E'\x'`, `E'\xg'`, `E'\b\f\n\r\t\v\a'`, `E'\U0010FFFF'`,
	`E'\U00110000'`, `E'\u0000'`, `E'\''`,
}

// randomLiteral makes a U& string or identifier, with or without UESCAPE,
// or an E'…' string, from bytes that make escapes, valid and not.
func randomLiteral(r *rand.Rand) string {
	const alphabet = `\\\!!+0000072DD8E3Fxugz'`
	body := func(n int, drop string) string {
		var b strings.Builder
		for range n {
			c := alphabet[r.IntN(len(alphabet))]
			if strings.IndexByte(drop, c) < 0 {
				b.WriteByte(c)
			}
		}
		return b.String()
	}
	switch r.IntN(4) {
	case 0:
		return `U&'` + strings.ReplaceAll(body(1+r.IntN(12), ""), `'`, `''`) + `'`
	case 1:
		return `U&'` + strings.ReplaceAll(body(1+r.IntN(12), ""), `'`, `''`) + `' UESCAPE '!'`
	case 2:
		return `U&"` + body(1+r.IntN(12), `'`) + `"`
	default:
		return `E'` + body(1+r.IntN(12), `'`) + `'`
	}
}

// The lexer decodes each literal as the server does, and finds an escape
// bad (or the literal unterminated) exactly where the server refuses the
// text: a name Scan reads is the
// name the server runs, and what Scan calls unsure the server does not run.
func TestDecodeAgreesWithServer(t *testing.T) {
	srv := pgtest.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := srv.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	r := rand.New(rand.NewPCG(24, 2))
	all := append([]string{}, literals...)
	for range 400 {
		all = append(all, randomLiteral(r))
	}
	for _, lit := range all {
		ident := strings.HasPrefix(lit, `U&"`)
		query := "select " + lit + "::text"
		if ident {
			query = "select 1 as " + lit
		}
		var server string
		var rows pgx.Rows
		rows, err = conn.Query(ctx, query, pgx.QueryExecModeSimpleProtocol)
		if err == nil {
			if rows.Next() {
				if ident {
					server = rows.FieldDescriptions()[0].Name
				} else {
					err = rows.Scan(&server)
				}
			}
			rows.Close()
			if err == nil {
				err = rows.Err()
			}
		}
		if ctx.Err() != nil {
			t.Fatal(ctx.Err())
		}
		l := lexer{s: lit}
		tok := l.next()
		after := l.next()
		// Unterminated (E'\'): the server refuses it too.
		bad := l.bad || tok.bad || l.open
		switch {
		case err != nil && !bad:
			t.Errorf("%s: the server refuses it (%v); the lexer reads %q", lit, err, tok.text)
		case err == nil && bad:
			t.Errorf("%s: the server reads %q; the lexer finds it bad", lit, server)
		case err == nil && tok.text != server:
			t.Errorf("%s: the server reads %q, the lexer %q", lit, server, tok.text)
		case err == nil && after.kind != tEOF:
			t.Errorf("%s: the lexer leaves %q after it", lit, after.text)
		}
	}
}
