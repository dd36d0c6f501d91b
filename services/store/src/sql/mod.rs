//! What the two backends share: the SQL both run and the decoding of its
//! rows, written once for any [`Dialect`].
//!
//! - [`rows`]: column lists, row decoders and the driver-error mapping.

pub(crate) mod rows;

use sqlx::{Database, Decode, Type};
use uuid::Uuid;

use self::rows::Columns;

/// A database as the shared code sees it: implemented for `sqlx::Postgres`
/// and `sqlx::Sqlite`, each in its backend's module.
pub(crate) trait Dialect: Database<Row: Columns> {
    /// How the database keeps a UUID column: natively on Postgres, as
    /// hyphenated text on SQLite.
    type Uuid: for<'r> Decode<'r, Self> + Type<Self> + From<Uuid> + Into<Uuid>;
}
