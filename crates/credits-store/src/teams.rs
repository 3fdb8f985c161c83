//! Teams and members. This module owns their rows. Of the team rules it enforces only the
//! ones two concurrent calls could break between a check and a write: a team keeps at least
//! one ADMIN ([`Store::remove_member`]) and at most [`MAX_LIST`] members
//! ([`Store::add_member`]). Who may configure whom is checked by the caller.

use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, TransactionTrait,
};

use crate::entity::{team_members, teams, wallets};
use crate::error::StoreError;
use crate::feed::notify_member;
use crate::rows::*;
use crate::time::{from_us, to_us};
use crate::wallet::insert_wallet;
use crate::{MAX_LIST, Store};

fn team_row(m: teams::Model) -> Result<TeamRow, StoreError> {
    Ok(TeamRow {
        created_at: from_us(m.created_us)?,
        id: m.id,
        name: m.name,
        wallet_id: m.wallet_id,
    })
}

fn member_model(m: &MemberRow) -> team_members::Model {
    team_members::Model {
        team_id: m.team_id.clone(),
        user_id: m.user_id.clone(),
        role: m.role.as_str().to_owned(),
        daily_limit_ucr: m.daily_limit_ucr,
        period_limit_ucr: m.period_limit_ucr,
        added_us: to_us(m.added_at),
    }
}

fn member_row(m: team_members::Model) -> Result<MemberRow, StoreError> {
    Ok(MemberRow {
        role: MemberRole::parse(&m.role)?,
        added_at: from_us(m.added_us)?,
        team_id: m.team_id,
        user_id: m.user_id,
        daily_limit_ucr: m.daily_limit_ucr,
        period_limit_ucr: m.period_limit_ucr,
    })
}

/// A member's limits or membership changed, inside the caller's transaction: the pool
/// wallet's members version moves, and so does its fencing version, so that no node commits
/// a spend it decided on the old limits (its commit is fenced out, it reloads, and the spend
/// is decided again on limits read afresh); other nodes are told to read the seat again.
async fn member_changed<C: ConnectionTrait>(
    conn: &C,
    backend: crate::Backend,
    team_id: &str,
    user_id: &str,
) -> Result<(), DbErr> {
    wallets::Entity::update_many()
        .col_expr(
            wallets::Column::Version,
            Expr::col(wallets::Column::Version).add(1),
        )
        .col_expr(
            wallets::Column::MembersVersion,
            Expr::col(wallets::Column::MembersVersion).add(1),
        )
        .filter(wallets::Column::TeamId.eq(team_id))
        .exec(conn)
        .await?;
    notify_member(conn, backend, team_id, user_id).await
}

impl Store {
    /// Creates a team, its pool wallet (with the creation record) and its first members
    /// in one transaction.
    pub async fn create_team(
        &self,
        team: &TeamRow,
        pool: &NewWallet,
        members: &[MemberRow],
    ) -> Result<(), StoreError> {
        crate::bound("team members", members.len(), MAX_LIST)?;
        let txn = self.begin_write().await?;
        insert_wallet(&txn, pool).await?;
        teams::Entity::insert_many(crate::entity::active([teams::Model {
            id: team.id.clone(),
            name: team.name.clone(),
            wallet_id: team.wallet_id.clone(),
            created_us: to_us(team.created_at),
        }]))
        .exec_without_returning(&txn)
        .await
        .map_err(StoreError::from_db)?;
        for chunk in members.chunks(crate::INSERT_CHUNK) {
            team_members::Entity::insert_many(crate::entity::active(
                chunk.iter().map(member_model),
            ))
            .exec_without_returning(&txn)
            .await
            .map_err(StoreError::from_db)?;
        }
        txn.commit().await.map_err(StoreError::from_db)
    }

    pub async fn team(&self, id: &str) -> Result<Option<TeamRow>, StoreError> {
        teams::Entity::find_by_id(id.to_owned())
            .one(&self.db)
            .await
            .map_err(StoreError::Db)?
            .map(team_row)
            .transpose()
    }

    /// The team whose pool is `wallet_id`.
    pub async fn team_of_wallet(&self, wallet_id: &str) -> Result<Option<TeamRow>, StoreError> {
        teams::Entity::find()
            .filter(teams::Column::WalletId.eq(wallet_id))
            .one(&self.db)
            .await
            .map_err(StoreError::Db)?
            .map(team_row)
            .transpose()
    }

    /// Teams `user_id` belongs to, in team creation order, at most [`MAX_LIST`].
    pub async fn teams_of_user(&self, user_id: &str) -> Result<Vec<TeamRow>, StoreError> {
        let ids: Vec<String> = team_members::Entity::find()
            .select_only()
            .column(team_members::Column::TeamId)
            .filter(team_members::Column::UserId.eq(user_id))
            .limit(MAX_LIST as u64)
            .into_tuple()
            .all(&self.db)
            .await
            .map_err(StoreError::Db)?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        teams::Entity::find()
            .filter(teams::Column::Id.is_in(ids))
            .order_by_asc(teams::Column::CreatedUs)
            .order_by_asc(teams::Column::Id)
            .all(&self.db)
            .await
            .map_err(StoreError::Db)?
            .into_iter()
            .map(team_row)
            .collect()
    }

    /// Members of a team in the order they were added, then by user id (as bytes): every
    /// one (a team has at most [`MAX_LIST`]).
    pub async fn members(&self, team_id: &str) -> Result<Vec<MemberRow>, StoreError> {
        self.first_members(team_id, MAX_LIST).await
    }

    /// The first `limit` (≤ [`MAX_LIST`]) of [`Store::members`].
    pub async fn first_members(
        &self,
        team_id: &str,
        limit: usize,
    ) -> Result<Vec<MemberRow>, StoreError> {
        crate::bound("members", limit, MAX_LIST)?;
        let mut members = team_members::Entity::find()
            .filter(team_members::Column::TeamId.eq(team_id))
            .order_by_asc(team_members::Column::AddedUs)
            .order_by_asc(team_members::Column::UserId)
            .limit(limit as u64)
            .all(&self.db)
            .await
            .map_err(StoreError::Db)?;
        // Members added at one instant (a team's admins) in the same order on SQLite and
        // PostgreSQL, whose collation orders text its own way (found by review).
        members.sort_by(|a, b| (a.added_us, &a.user_id).cmp(&(b.added_us, &b.user_id)));
        members.into_iter().map(member_row).collect()
    }

    pub async fn member(
        &self,
        team_id: &str,
        user_id: &str,
    ) -> Result<Option<MemberRow>, StoreError> {
        team_members::Entity::find_by_id((team_id.to_owned(), user_id.to_owned()))
            .one(&self.db)
            .await
            .map_err(StoreError::Db)?
            .map(member_row)
            .transpose()
    }

    /// A member's row as a spend may use it, with the pool's members version it is valid
    /// at. The version is read first: a change landing between the two reads leaves a
    /// version older than the row, which the pool's wallet actor refuses (and the seat is
    /// read again), never a newer version on an older row.
    pub async fn seat(
        &self,
        team_id: &str,
        user_id: &str,
    ) -> Result<(i64, Option<MemberRow>), StoreError> {
        let version: Option<i64> = wallets::Entity::find()
            .select_only()
            .column(wallets::Column::MembersVersion)
            .filter(wallets::Column::TeamId.eq(team_id))
            .into_tuple()
            .one(&self.db)
            .await
            .map_err(StoreError::Db)?;
        Ok((version.unwrap_or(0), self.member(team_id, user_id).await?))
    }

    /// Adds a member, unless they already are one or the team has [`MAX_LIST`] members
    /// (so that [`Store::members`] always lists every one); nothing changes then. The
    /// count and the insert are one transaction that locks the team's row (SQLite: one
    /// writer at a time), so two adds at once cannot pass the bound together.
    pub async fn add_member(&self, member: &MemberRow) -> Result<MemberAdded, StoreError> {
        let txn = self.begin_write().await?;
        let mut team = teams::Entity::find_by_id(member.team_id.clone());
        if self.backend() == crate::Backend::Postgres {
            team = team.lock_exclusive();
        }
        team.one(&txn).await.map_err(StoreError::Db)?;
        let count = team_members::Entity::find()
            .filter(team_members::Column::TeamId.eq(&member.team_id))
            .count(&txn)
            .await
            .map_err(StoreError::Db)?;
        if count >= MAX_LIST as u64 {
            return Ok(MemberAdded::TeamFull);
        }
        let inserted =
            team_members::Entity::insert_many(crate::entity::active([member_model(member)]))
                .on_conflict_do_nothing()
                .exec_without_returning(&txn)
                .await
                .map_err(StoreError::from_db)?;
        if !matches!(inserted, sea_orm::TryInsertResult::Inserted(n) if n > 0) {
            return Ok(MemberAdded::AlreadyMember);
        }
        txn.commit().await.map_err(StoreError::from_db)?;
        Ok(MemberAdded::Added)
    }

    /// Removes a member, unless they are the team's last ADMIN. The check and the delete
    /// are one transaction that locks the team's ADMIN rows (SQLite: one writer at a
    /// time), so two admins removing each other at once cannot leave the team with none.
    pub async fn remove_member(
        &self,
        team_id: &str,
        user_id: &str,
    ) -> Result<MemberRemoval, StoreError> {
        let txn = self.begin_write().await?;
        let mut admins = team_members::Entity::find()
            .select_only()
            .column(team_members::Column::UserId)
            .filter(team_members::Column::TeamId.eq(team_id))
            .filter(team_members::Column::Role.eq(MemberRole::Admin.as_str()));
        if self.backend() == crate::Backend::Postgres {
            admins = admins.lock_exclusive();
        }
        let admins: Vec<String> = admins
            .into_tuple()
            .all(&txn)
            .await
            .map_err(StoreError::Db)?;
        if admins.len() == 1 && admins[0] == user_id {
            return Ok(MemberRemoval::LastAdmin);
        }
        let res = team_members::Entity::delete_by_id((team_id.to_owned(), user_id.to_owned()))
            .exec(&txn)
            .await
            .map_err(StoreError::Db)?;
        if res.rows_affected == 0 {
            return Ok(MemberRemoval::NotAMember);
        }
        member_changed(&txn, self.backend(), team_id, user_id)
            .await
            .map_err(StoreError::Db)?;
        txn.commit().await.map_err(StoreError::Db)?;
        Ok(MemberRemoval::Removed)
    }

    /// Replaces both limits of a member (None = no limit); false for a non-member.
    pub async fn set_member_limits(
        &self,
        team_id: &str,
        user_id: &str,
        daily_limit_ucr: Option<i64>,
        period_limit_ucr: Option<i64>,
    ) -> Result<bool, StoreError> {
        let txn = self.db.begin().await.map_err(StoreError::Db)?;
        let res = team_members::Entity::update_many()
            .col_expr(
                team_members::Column::DailyLimitUcr,
                Expr::value(daily_limit_ucr),
            )
            .col_expr(
                team_members::Column::PeriodLimitUcr,
                Expr::value(period_limit_ucr),
            )
            .filter(team_members::Column::TeamId.eq(team_id))
            .filter(team_members::Column::UserId.eq(user_id))
            .exec(&txn)
            .await
            .map_err(StoreError::Db)?;
        if res.rows_affected == 0 {
            return Ok(false);
        }
        member_changed(&txn, self.backend(), team_id, user_id)
            .await
            .map_err(StoreError::Db)?;
        txn.commit().await.map_err(StoreError::Db)?;
        Ok(true)
    }

    /// Changes a member's role; false for a non-member.
    pub async fn set_member_role(
        &self,
        team_id: &str,
        user_id: &str,
        role: MemberRole,
    ) -> Result<bool, StoreError> {
        let res = team_members::Entity::update_many()
            .col_expr(team_members::Column::Role, Expr::value(role.as_str()))
            .filter(team_members::Column::TeamId.eq(team_id))
            .filter(team_members::Column::UserId.eq(user_id))
            .exec(&self.db)
            .await
            .map_err(StoreError::Db)?;
        Ok(res.rows_affected > 0)
    }
}
