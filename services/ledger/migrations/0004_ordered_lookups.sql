-- Lookups that take the first row for a key in primary-key order get an index whose order is that
-- order. With an index on the key alone, the planner may walk the primary key and filter instead
-- (it does on a table not analyzed yet, where it expects the key to match many rows), reading the
-- table up to the match: measured at 1.25 ms for one invoice among 20,000, growing with the ledger.
DROP INDEX invoice_states_by_number;
CREATE INDEX invoice_states_by_number ON invoice_states (invoice_number, invoice_id);
DROP INDEX transactions_by_id;
CREATE INDEX transactions_by_id ON transactions (transaction_id, chain_id, height, idx);
