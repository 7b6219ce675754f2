package warmpg

import "database/sql/driver"

// PhaseOf reports, for the tests of package warmpg_test, the transaction
// phase (state.go) of the connection (*sql.Conn).Raw hands out, and
// whether its session is dirty.
func PhaseOf(dc any) (string, bool) {
	c := baseConn(dc.(driver.Conn))
	return c.phase().String(), c.st.dirty()
}
