//! Tenant-scoped repositories over the Orkestra schema (being built: see the README).
