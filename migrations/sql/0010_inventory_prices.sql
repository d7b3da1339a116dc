-- Catalog prices in the inventory read model (crate `projections`, module
-- `inventory`). An item created before prices existed (`ItemCreated` schema
-- version 1) has neither a price nor a currency until an operator prices it;
-- a price, once set, is always `> 0` and in a currency.
ALTER TABLE read_models.inventory
    ADD COLUMN unit_price bigint CHECK (unit_price > 0),
    ADD COLUMN currency   text,
    ADD CHECK ((unit_price IS NULL) = (currency IS NULL));
