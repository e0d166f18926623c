"""a new order's rules in one BEFORE INSERT trigger, with one lookup of what it names

Revision ID: 0041
Revises: 0040
Create Date: 2026-11-29

Every new order went through three BEFORE INSERT triggers on orders, each a PL/pgSQL call
with lookups of its own: orders_approvals_required (the approvals its desk's policy asks,
migrations 0016 and 0018), orders_instrument_rules (the instrument's and the client's rules,
0001: a lookup of each) and orders_time_in_force (a DAY order's expiry at its desk's
cut-off, a GTD order's in the future, 0017: a lookup of the desk). Issue 15: a new order's
PostgreSQL CPU.

orders_enforce_instrument_rules now does all three on INSERT, after one lookup of the
instrument, the client and the order's desk together; on UPDATE (of quantity, price,
instrument, client, desk or currency) it checks the instrument's and client's rules as
before. The rules, their order for any one row and their errors are unchanged:
an unknown instrument or client, then an inactive one, the lot, the tick, the currency and
the client's desk; then the approvals (tradeops_approvals_required, unchanged); then the
DAY order's expiry and the GTD order's. The other two triggers and their functions go.
tests/integration/test_approval_policies.py, test_expiry.py and test_order_rules_in_db.py
hold the rules; bench/statement_ab.py --statement order_insert --against 0040 measures it.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0041"
down_revision: str | None = "0040"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_RULES = """
CREATE OR REPLACE FUNCTION orders_enforce_instrument_rules() RETURNS trigger
LANGUAGE plpgsql AS $$"""

IN_ONE_TRIGGER = f"""{_RULES}
DECLARE
    ins_found boolean; ins_symbol text; ins_active boolean; ins_lot_size numeric;
    ins_tick_size numeric; ins_currency text;
    cli_found boolean; cli_external_id text; cli_status text; cli_desk_id bigint;
    desk_found boolean; desk_time_zone text; desk_day_cutoff time;
BEGIN
    -- One lookup for the three: the order's instrument, its client and (a new order's) desk.
    SELECT i.id IS NOT NULL, i.symbol, i.active, i.lot_size, i.tick_size, i.currency,
           c.id IS NOT NULL, c.external_id, c.status, c.desk_id,
           d.id IS NOT NULL, d.time_zone, d.day_cutoff
    INTO ins_found, ins_symbol, ins_active, ins_lot_size, ins_tick_size, ins_currency,
         cli_found, cli_external_id, cli_status, cli_desk_id,
         desk_found, desk_time_zone, desk_day_cutoff
    FROM (SELECT 1) AS one
    LEFT JOIN instruments i ON i.id = NEW.instrument_id
    LEFT JOIN clients c ON c.id = NEW.client_id
    LEFT JOIN desks d ON d.id = NEW.desk_id AND TG_OP = 'INSERT';
    -- The instrument's and the client's rules, as migration 0001 wrote them.
    IF NOT ins_found THEN
        RAISE EXCEPTION 'unknown instrument' USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF NOT cli_found THEN
        RAISE EXCEPTION 'unknown client' USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF TG_OP = 'INSERT' AND NOT ins_active THEN
        RAISE EXCEPTION 'instrument % is not active', ins_symbol USING ERRCODE = 'check_violation';
    END IF;
    IF TG_OP = 'INSERT' AND cli_status <> 'ACTIVE' THEN
        RAISE EXCEPTION 'client % is not active', cli_external_id USING ERRCODE = 'check_violation';
    END IF;
    IF mod(NEW.quantity, ins_lot_size) <> 0 THEN
        RAISE EXCEPTION 'quantity is not a multiple of the lot size' USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.price IS NOT NULL AND mod(NEW.price, ins_tick_size) <> 0 THEN
        RAISE EXCEPTION 'price is not a multiple of the tick size' USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.currency <> ins_currency THEN
        RAISE EXCEPTION 'currency differs from the instrument' USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.desk_id <> cli_desk_id THEN
        RAISE EXCEPTION 'desk differs from the client''s desk' USING ERRCODE = 'check_violation';
    END IF;
    IF TG_OP = 'UPDATE' THEN
        RETURN NEW;
    END IF;
    -- A new order: the approvals its desk's policy asks (migration 0016), whatever the writer
    -- wrote, and when it expires (0017).
    NEW.approvals_required := COALESCE(tradeops_approvals_required(
        NEW.desk_id, NEW.instrument_id, NEW.quantity, NEW.price), 1);
    IF NEW.time_in_force = 'DAY' AND NEW.expire_at IS NULL THEN
        IF NOT desk_found THEN
            PERFORM orders_maker_checker_refuse(NEW.id, 'a DAY order needs its desk''s cut-off');
        END IF;
        NEW.expire_at := tradeops_day_end(desk_time_zone, desk_day_cutoff, now());
    END IF;
    IF NEW.time_in_force = 'GTD' AND NEW.expire_at <= now() THEN
        PERFORM orders_maker_checker_refuse(NEW.id, 'a GTD order expires in the future');
    END IF;
    RETURN NEW;
END $$;

DROP TRIGGER orders_approvals_required ON orders;
DROP TRIGGER orders_time_in_force ON orders;
DROP FUNCTION orders_set_approvals_required(), orders_enforce_time_in_force();
"""  # noqa: S608 - SQL from constants only

# As migrations 0001, 0017 and 0018 wrote them.
IN_THREE_TRIGGERS = f"""{_RULES}
DECLARE
    ins instruments%ROWTYPE;
    cli clients%ROWTYPE;
BEGIN
    SELECT * INTO ins FROM instruments WHERE id = NEW.instrument_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown instrument' USING ERRCODE = 'foreign_key_violation';
    END IF;
    SELECT * INTO cli FROM clients WHERE id = NEW.client_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown client' USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF TG_OP = 'INSERT' AND NOT ins.active THEN
        RAISE EXCEPTION 'instrument % is not active', ins.symbol USING ERRCODE = 'check_violation';
    END IF;
    IF TG_OP = 'INSERT' AND cli.status <> 'ACTIVE' THEN
        RAISE EXCEPTION 'client % is not active', cli.external_id USING ERRCODE = 'check_violation';
    END IF;
    IF mod(NEW.quantity, ins.lot_size) <> 0 THEN
        RAISE EXCEPTION 'quantity is not a multiple of the lot size' USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.price IS NOT NULL AND mod(NEW.price, ins.tick_size) <> 0 THEN
        RAISE EXCEPTION 'price is not a multiple of the tick size' USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.currency <> ins.currency THEN
        RAISE EXCEPTION 'currency differs from the instrument' USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.desk_id <> cli.desk_id THEN
        RAISE EXCEPTION 'desk differs from the client''s desk' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE FUNCTION orders_set_approvals_required() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.approvals_required := COALESCE(tradeops_approvals_required(
        NEW.desk_id, NEW.instrument_id, NEW.quantity, NEW.price), 1);
    RETURN NEW;
END $$;

CREATE TRIGGER orders_approvals_required BEFORE INSERT ON orders FOR EACH ROW
    EXECUTE FUNCTION orders_set_approvals_required();

CREATE FUNCTION orders_enforce_time_in_force() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    d desks%ROWTYPE;
BEGIN
    IF NEW.time_in_force = 'DAY' AND NEW.expire_at IS NULL THEN
        SELECT * INTO d FROM desks WHERE id = NEW.desk_id;
        IF NOT FOUND THEN
            PERFORM orders_maker_checker_refuse(NEW.id, 'a DAY order needs its desk''s cut-off');
        END IF;
        NEW.expire_at := tradeops_day_end(d.time_zone, d.day_cutoff, now());
    END IF;
    IF NEW.time_in_force = 'GTD' AND NEW.expire_at <= now() THEN
        PERFORM orders_maker_checker_refuse(NEW.id, 'a GTD order expires in the future');
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER orders_time_in_force BEFORE INSERT ON orders FOR EACH ROW
    WHEN (NEW.time_in_force IN ('DAY', 'GTD'))
    EXECUTE FUNCTION orders_enforce_time_in_force();
"""  # noqa: S608 - SQL from constants only


def upgrade() -> None:
    op.execute(IN_ONE_TRIGGER)


def downgrade() -> None:
    op.execute(IN_THREE_TRIGGERS)
