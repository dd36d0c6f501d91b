//! How a WebSocket ends: the close codes of the client contract, in one
//! place.
//!
//! Every close the gateway sends is a [`Close`]. Those that end a
//! connection because of an error are built from the error's
//! [`ErrorCode`] (which alone knows its close code); the others (too slow,
//! a protocol error) have a constant here. docs/api.md lists when each is
//! sent.

use chat_core::ErrorCode;

/// A close frame's code and reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Close {
    pub code: u16,
    pub reason: &'static str,
}

impl Close {
    /// 4001: no valid credentials at connect, or the session was revoked.
    pub const UNAUTHORIZED: Close = Close::of(ErrorCode::Unauthorized);
    /// 4003: the connection is not allowed (its `Origin` is not one the
    /// gateway accepts).
    pub const FORBIDDEN: Close = Close::of(ErrorCode::Forbidden);
    /// 4008: more client frames per second than allowed.
    pub const RATE_LIMITED: Close = Close::of(ErrorCode::RateLimited);
    /// 1009: a client frame over the size limit.
    pub const TOO_LARGE: Close = Close::of(ErrorCode::TooLarge);
    /// 1011: the connection hit a server bug and cannot go on.
    pub const INTERNAL: Close = Close::of(ErrorCode::Internal);
    /// 1012: the server is shutting down or cannot serve the connection
    /// right now: reconnect (any replica will do).
    pub const RESTARTING: Close = Close::of(ErrorCode::Unavailable);
    /// 4009: the client fell too far behind (or its history could not be
    /// read): reconnect and resubscribe with `since_seq`.
    pub const TOO_SLOW: Close = Close {
        code: 4009,
        reason: "too slow: resubscribe with since_seq",
    };
    /// 1002: the client broke the WebSocket protocol.
    pub const PROTOCOL: Close = Close {
        code: 1002,
        reason: "protocol error",
    };

    /// The close for an error that ends a connection.
    pub const fn of(code: ErrorCode) -> Close {
        Close {
            code: code.close_code(),
            reason: match code {
                ErrorCode::Unauthorized => "unauthorized or session revoked",
                ErrorCode::Forbidden => "forbidden",
                ErrorCode::RateLimited => "rate limited",
                ErrorCode::TooLarge => "frame too large",
                ErrorCode::Unavailable => "server restarting: reconnect",
                ErrorCode::Internal => "internal error",
                ErrorCode::InvalidRequest | ErrorCode::NotFound | ErrorCode::Conflict => {
                    "invalid request"
                }
            },
        }
    }

    /// The same code with a more precise reason.
    pub const fn because(self, reason: &'static str) -> Close {
        Close { reason, ..self }
    }
}

/// Why a connection's task stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Send this close frame, then let the socket go.
    Close(Close),
    /// The client left or the socket failed: nothing more to send.
    Gone,
}

impl From<Close> for End {
    fn from(c: Close) -> Self {
        End::Close(c)
    }
}

impl From<super::out::Refused> for End {
    /// A write the socket refused: a client too slow to take it is closed
    /// with 4009; a dead socket just ends.
    fn from(r: super::out::Refused) -> Self {
        match r {
            super::out::Refused::Full => End::Close(Close::TOO_SLOW),
            super::out::Refused::Dead => End::Gone,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contract_codes_come_from_the_error_codes() {
        assert_eq!(Close::UNAUTHORIZED.code, 4001);
        assert_eq!(Close::FORBIDDEN.code, 4003);
        assert_eq!(Close::RATE_LIMITED.code, 4008);
        assert_eq!(Close::TOO_SLOW.code, 4009);
        assert_eq!(Close::TOO_LARGE.code, 1009);
        assert_eq!(Close::INTERNAL.code, 1011);
        assert_eq!(Close::RESTARTING.code, 1012);
    }

    #[test]
    fn a_refused_write_ends_with_4009_only_when_the_client_is_slow() {
        use super::super::out::Refused;
        assert_eq!(End::from(Refused::Full), End::Close(Close::TOO_SLOW));
        assert_eq!(End::from(Refused::Dead), End::Gone);
    }
}
