-- Holder pre-check for UNLOCK / CLOSE: the invoices an organisation has locked.
CREATE INDEX reimbursement_transactions_by_org_invoice
    ON reimbursement_transactions (organisation_tax_id, invoice_number) WHERE action = 'LOCK';
