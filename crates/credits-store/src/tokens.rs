//! API tokens, stored as the SHA-256 of their secret only. This module never sees or
//! stores a secret beyond hashing it in [`TokenHash::of_secret`], and never logs a hash.

use sea_orm::EntityTrait;

use crate::Store;
use crate::entity::api_tokens;
use crate::error::StoreError;
use crate::rows::*;
use crate::time::{from_us, to_us};

impl Store {
    /// Stores a token; a hash already stored is [`StoreError::Duplicate`].
    pub async fn insert_token(&self, token: &TokenRow) -> Result<(), StoreError> {
        api_tokens::Entity::insert_many(crate::entity::active([api_tokens::Model {
            hash: token.hash.as_hex().to_owned(),
            role: token.role.as_str().to_owned(),
            owner_id: token.owner_id.clone(),
            label: token.label.clone(),
            created_us: to_us(token.created_at),
        }]))
        .exec_without_returning(&self.db)
        .await
        .map_err(StoreError::from_db)?;
        Ok(())
    }

    /// Deletes the token whose secret hashes to `hash`: whether there was one.
    pub async fn delete_token(&self, hash: &TokenHash) -> Result<bool, StoreError> {
        let deleted = api_tokens::Entity::delete_by_id(hash.as_hex().to_owned())
            .exec(&self.db)
            .await
            .map_err(StoreError::Db)?;
        Ok(deleted.rows_affected > 0)
    }

    /// Every stored token, oldest first, as the operator lists them (no secret is stored).
    pub async fn tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        use sea_orm::QueryOrder;
        api_tokens::Entity::find()
            .order_by_asc(api_tokens::Column::CreatedUs)
            .order_by_asc(api_tokens::Column::Hash)
            .all(&self.db)
            .await
            .map_err(StoreError::Db)?
            .into_iter()
            .map(token_row)
            .collect()
    }

    /// The token whose secret hashes to `hash`, if any.
    pub async fn find_token(&self, hash: &TokenHash) -> Result<Option<TokenRow>, StoreError> {
        let Some(m) = api_tokens::Entity::find_by_id(hash.as_hex().to_owned())
            .one(&self.db)
            .await
            .map_err(StoreError::Db)?
        else {
            return Ok(None);
        };
        token_row(m).map(Some)
    }
}

fn token_row(m: api_tokens::Model) -> Result<TokenRow, StoreError> {
    Ok(TokenRow {
        role: TokenRole::parse(&m.role)?,
        created_at: from_us(m.created_us)?,
        hash: TokenHash::from_stored(m.hash),
        owner_id: m.owner_id,
        label: m.label,
    })
}
