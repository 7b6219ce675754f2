package warmpg

import "github.com/warmpg/warmpg/internal/sqltext"

// connState is what warmpg knows of what a connection's statements did: the
// transaction it is in and what they may have changed in the session. It is
// the connection's one state machine; the statement step (step.go) reads it
// before every statement and updates it after, BeginTx, Commit and
// Rollback move it between transactions, and ResetSession (reset.go)
// returns it to idle and clean. database/sql uses a connection from one
// goroutine at a time, so it needs no lock.
//
// The transaction, as phase reports it:
//
//	idle        no transaction warmpg knows of
//	  │ BeginTx, pool_autocommit and cannot write
//	  ├──────────────▶ autocommit   plain reads run in autocommit, nothing sent at BeginTx
//	  │                  │ a statement that is not a plain read: BEGIN READ ONLY (upgrade)
//	  │                  ▼
//	  │ BeginTx, pool_lazy_begin   inTx
//	  ├──────────────▶ pending ──▶ inTx     the BEGIN went with the first statement
//	  │                  └──────▶ failed    an error came in place of its reply: every
//	  │                                     statement is refused (25P02), Commit rolls back
//	  │ BeginTx (eager), or BEGIN in a statement's text
//	  └──────────────▶ inTx
//	Commit, Rollback, ResetSession: back to idle.
//
// The session is dirty (maybeSession, maybePrepared) from a statement whose
// text may change it (SET, set_config, PREPARE, ...: sqltext's
// SessionState) to the next ResetSession, which resets it in check mode.
//
// pgx reports the server's transaction status itself (txStatus), and
// lazywire.go's beginConn what became of a lazy BEGIN; the state keeps
// only what neither says: which transaction warmpg opened, and for a driver
// that reports no status (lib/pq), whether one may be open (maybeTx).
type connState struct {
	// ac is the pool_autocommit transaction open on the connection, lazy
	// the pool_lazy_begin one: at most one is set, until its Commit or
	// Rollback.
	ac   *autocommitTx
	lazy *lazyTx
	// maybeTx: a transaction may be open that the driver does not report
	// — BeginTx, or a BEGIN in a statement's text, not yet followed by a
	// COMMIT or ROLLBACK that succeeded (read for lib/pq only).
	maybeTx bool
	// freshBegin is the BEGIN of the last transaction BeginTx began on
	// its own (pgx, pool_lazy_begin off), and freshWrites the wire
	// layer's count of writes right after it: while the transaction's
	// first statement is the only write since, it ran nothing else
	// (restartTx).
	freshBegin  string
	freshWrites uint64
	// What the statements since the last reset may have changed in the
	// session: a setting (check mode resets it), a statement prepared
	// with SQL PREPARE (the reset deallocates those too).
	maybeSession, maybePrepared bool
}

// phase is a connection's transaction, as connState's diagram shows it.
type phase uint8

const (
	phaseIdle       phase = iota // no transaction
	phaseAutocommit              // pool_autocommit: nothing begun, reads in autocommit
	phasePending                 // pool_lazy_begin: the BEGIN waits for the first statement
	phaseInTx                    // a transaction is open (for lib/pq: may be)
	phaseFailed                  // the lazy BEGIN failed: statements are refused
)

func (p phase) String() string {
	switch p {
	case phaseIdle:
		return "idle"
	case phaseAutocommit:
		return "autocommit"
	case phasePending:
		return "pending"
	case phaseInTx:
		return "in transaction"
	case phaseFailed:
		return "failed"
	}
	return "unknown"
}

// phase reports c's transaction.
func (c *conn) phase() phase {
	switch s := &c.st; {
	case s.lazy != nil:
		if s.lazy.aborted {
			return phaseFailed
		}
		switch out, _ := c.bc.state(); out {
		case beginPending:
			return phasePending
		case beginFailed:
			return phaseFailed
		}
		return phaseInTx
	case s.ac != nil:
		if s.ac.tx == nil {
			return phaseAutocommit
		}
		return phaseInTx
	case c.maybeInTx():
		return phaseInTx
	}
	return phaseIdle
}

// noted are the effects a statement's text is read for before it runs: a
// transaction begun or ended, and every effect that outlives a transaction.
const noted = sqltext.Begin | sqltext.End | sqltext.SessionState

// note records, before a statement runs, what its text says it may do:
// begin a transaction (maybeTx), change the session, prepare a statement
// with SQL PREPARE.
func (s *connState) note(info sqltext.Info) {
	if info.Effects&noted == 0 {
		return
	}
	if info.Has(sqltext.Begin) {
		s.maybeTx = true
	}
	if info.Has(sqltext.SessionState) {
		s.maybeSession = true
	}
	if info.Has(sqltext.Prepare) {
		s.maybePrepared = true
	}
}

// done records, after a statement ran without error, that it ended the
// transaction it, or one before it, began ("COMMIT"; "BEGIN; …; COMMIT").
// After an error the transaction may still be open (in a failed state),
// and maybeTx stays.
func (s *connState) done(info sqltext.Info, err error) {
	if err == nil && info.Last == sqltext.End {
		s.maybeTx = false
	}
}

// dirty reports whether a statement since the last reset may have changed
// the session.
func (s *connState) dirty() bool { return s.maybeSession || s.maybePrepared }

// endTx forgets the transaction warmpg opened (Commit, Rollback, reset).
func (s *connState) endTx() { s.ac, s.lazy = nil, nil }
