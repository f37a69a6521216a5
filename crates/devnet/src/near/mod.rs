//! A NEAR JSON-RPC stand-in (to be written).
