package sqltext

import "testing"

var benchQueries = []struct{ name, sql string }{
	{"select", "select id, name, email from users where id = $1"},
	{"insert", "INSERT INTO events (user_id, kind, payload, created_at) VALUES ($1, $2, $3, now()) RETURNING id"},
	{"long", "SELECT u.id, u.name, o.total FROM users u JOIN orders o ON o.user_id = u.id WHERE u.tenant = $1 AND o.created_at > $2 AND o.status IN ('paid', 'shipped', 'delivered') ORDER BY o.created_at DESC LIMIT 50"},
	{"set", "SET search_path = tenant_1, public"},
}

func BenchmarkScan(b *testing.B) {
	for _, q := range benchQueries {
		b.Run(q.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				Scan(q.sql)
			}
		})
	}
}

func BenchmarkMayHave(b *testing.B) {
	for _, q := range benchQueries {
		b.Run(q.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				MayHave(q.sql, quickEffects)
			}
		})
	}
}
