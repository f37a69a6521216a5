-- The nonces of wallet-signed requests every replica has accepted: a
-- signature is good for five minutes on any replica, so each nonce is
-- spent once across all of them. `forget_after` is Unix milliseconds, past
-- which the signature is too old to pass and its row may go.
CREATE TABLE wallet_nonces (
    nonce BYTEA PRIMARY KEY,
    forget_after BIGINT NOT NULL
);
CREATE INDEX wallet_nonces_forget_after ON wallet_nonces (forget_after);
