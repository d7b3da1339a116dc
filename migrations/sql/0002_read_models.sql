-- Read models built by the projection workers (crate `projections`) and served
-- by the Query API. Everything in this schema is derived from the event log and
-- can be dropped and rebuilt from it (DESIGN.md points 5 and 6).
CREATE SCHEMA IF NOT EXISTS read_models;

-- The stream version each projection has applied. Updated in the same
-- transaction as the projection's rows: an event at or below this version is a
-- duplicate and changes nothing.
CREATE TABLE read_models.applied (
    projection text   NOT NULL,
    stream_id  text   NOT NULL,
    version    bigint NOT NULL CHECK (version >= 0),
    PRIMARY KEY (projection, stream_id)
);

-- One row per projection, updated by every committed batch.
CREATE TABLE read_models.projection_status (
    projection          text        PRIMARY KEY,
    last_position       bigint      NOT NULL DEFAULT 0,
    last_transaction_id bigint      NOT NULL DEFAULT 0,
    events_applied      bigint      NOT NULL DEFAULT 0,
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- Streams whose next event failed to apply repeatedly (a poison event). Later
-- events of a parked stream wait; other streams flow on.
CREATE TABLE read_models.parked (
    projection text        NOT NULL,
    stream_id  text        NOT NULL,
    version    bigint      NOT NULL,
    event_id   uuid        NOT NULL,
    error      text        NOT NULL,
    attempts   integer     NOT NULL,
    parked_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, stream_id)
);

CREATE TABLE read_models.accounts (
    account_id  uuid        PRIMARY KEY,
    customer_id uuid        NOT NULL,
    currency    text        NOT NULL,
    balance     bigint      NOT NULL CHECK (balance >= 0),
    status      text        NOT NULL CHECK (status IN ('open', 'closed')),
    version     bigint      NOT NULL,
    updated_at  timestamptz NOT NULL
);

-- The transaction ledger: one row per balance-changing event, `seq` is the
-- account stream's version of that event.
CREATE TABLE read_models.account_transactions (
    account_id    uuid        NOT NULL REFERENCES read_models.accounts (account_id),
    seq           bigint      NOT NULL,
    kind          text        NOT NULL CHECK (kind IN ('deposit', 'withdrawal', 'charge', 'refund')),
    amount        bigint      NOT NULL CHECK (amount > 0),
    balance_after bigint      NOT NULL CHECK (balance_after >= 0),
    order_id      uuid,
    at            timestamptz NOT NULL,
    PRIMARY KEY (account_id, seq)
);

CREATE TABLE read_models.inventory (
    sku        text        PRIMARY KEY,
    name       text        NOT NULL,
    on_hand    bigint      NOT NULL CHECK (on_hand >= 0),
    reserved   bigint      NOT NULL CHECK (reserved >= 0 AND reserved <= on_hand),
    version    bigint      NOT NULL,
    updated_at timestamptz NOT NULL
);

CREATE TABLE read_models.orders (
    order_id            uuid        PRIMARY KEY,
    customer_id         uuid        NOT NULL,
    account_id          uuid        NOT NULL,
    currency            text        NOT NULL,
    status              text        NOT NULL
        CHECK (status IN ('placed', 'reserved', 'paid', 'shipped', 'cancelled')),
    total               bigint      NOT NULL CHECK (total >= 0),
    cancellation_reason text,
    tracking_number     text,
    version             bigint      NOT NULL,
    placed_at           timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL
);

-- `GET /orders?customer_id=&status=` pages by order_id within the filter.
CREATE INDEX orders_customer_idx ON read_models.orders (customer_id, order_id);
CREATE INDEX orders_status_idx ON read_models.orders (status, order_id);

CREATE TABLE read_models.order_lines (
    order_id   uuid    NOT NULL REFERENCES read_models.orders (order_id),
    line_no    integer NOT NULL,
    sku        text    NOT NULL,
    quantity   bigint  NOT NULL CHECK (quantity > 0),
    unit_price bigint  NOT NULL CHECK (unit_price >= 0),
    PRIMARY KEY (order_id, line_no)
);
