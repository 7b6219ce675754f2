package warmpg

import (
	"context"
	"database/sql/driver"
	"errors"
	"testing"
)

// bareStmt is a driver.Stmt with no optional interface.
type bareStmt struct{ execs int }

func (s *bareStmt) Close() error  { return nil }
func (s *bareStmt) NumInput() int { return -1 }
func (s *bareStmt) Exec([]driver.Value) (driver.Result, error) {
	s.execs++
	return driver.RowsAffected(0), nil
}
func (s *bareStmt) Query([]driver.Value) (driver.Rows, error) { return nil, errors.New("no rows") }

// ccStmt is a bareStmt with a ColumnConverter.
type ccStmt struct{ bareStmt }

func (ccStmt) ColumnConverter(int) driver.ValueConverter { return driver.DefaultParameterConverter }

// nvcConn is a driver.Conn that is a NamedValueChecker.
type nvcConn struct{ driver.Conn }

var errChecked = errors.New("checked by the connection")

func (nvcConn) CheckNamedValue(*driver.NamedValue) error { return errChecked }

// Every statement is wrapped, so that its executions take the statement
// step; the wrapper declares ColumnConverter only when the inner statement
// has one, asks the connection's NamedValueChecker when the statement has
// none (as database/sql would), and marks the connection at each
// execution with what its text may do — a plain read nothing.
func TestWrapStmt(t *testing.T) {
	c := &conn{c: &Connector{}}
	plain := &bareStmt{}
	if _, err := c.wrapStmt(plain, "select 1").(driver.StmtExecContext).ExecContext(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	if c.st.maybeTx || c.st.dirty() || plain.execs != 1 {
		t.Errorf("an execution of a plain read: state %+v, inner executions %d", c.st, plain.execs)
	}
	w := c.wrapStmt(plain, "BEGIN")
	if _, ok := w.(driver.ColumnConverter); ok { //nolint:staticcheck // the point of the test
		t.Error("wrapper of a statement without ColumnConverter declares it")
	}
	if err := w.(driver.NamedValueChecker).CheckNamedValue(&driver.NamedValue{}); err != driver.ErrSkip {
		t.Errorf("CheckNamedValue with no checker anywhere: %v, want driver.ErrSkip", err)
	}
	if _, err := w.(driver.StmtExecContext).ExecContext(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	if !c.st.maybeTx || plain.execs != 2 {
		t.Errorf("an execution of BEGIN: maybeTx %v, inner executions %d", c.st.maybeTx, plain.execs)
	}
	if _, ok := c.wrapStmt(&ccStmt{}, "SET ROLE x").(driver.ColumnConverter); !ok { //nolint:staticcheck // the point of the test
		t.Error("wrapper of a statement with ColumnConverter lost it")
	}
	c2 := &conn{c: &Connector{}, inner: nvcConn{}}
	w2 := c2.wrapStmt(&bareStmt{}, "SET ROLE x")
	if err := w2.(driver.NamedValueChecker).CheckNamedValue(&driver.NamedValue{}); err != errChecked {
		t.Errorf("CheckNamedValue: %v, want the connection's", err)
	}
	if _, err := w2.Exec(nil); err != nil || !c2.st.maybeSession { //nolint:staticcheck // the legacy method
		t.Errorf("an execution of SET ROLE: %v, maybeSession %v", err, c2.st.maybeSession)
	}
}
