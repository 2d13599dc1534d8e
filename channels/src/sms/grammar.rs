//! The MO grammar (being written).
