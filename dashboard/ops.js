// Every GraphQL operation the dashboard sends, in one place, so the server side can check
// them against its schema. They use only the public contract (shared/contract.graphql).

const PLAN = `fragment PlanFields on Plan {
  id name dailyCredits subscriptionCredits interval modelTiers custom
}`;

const BALANCE = `fragment BalanceFields on Balance {
  total reserved
  daily { remaining allowance nextResetAt }
  subscription { remaining allowance periodStart periodEnd }
  bonus { remaining grants { id kind amount remaining reason grantedAt expiresAt } }
}`;

const REVIEW = `fragment ReviewFields on Review {
  id walletId threadId status note
  findings { threadCredits events retryLoopEvents costPercentile suggestedRefund tips }
  creditedGrant { id kind amount remaining reason grantedAt expiresAt }
}`;

export const VIEWER = `query DashboardViewer {
  viewer {
    role ownerId
    wallets { id ownerId timezone plan { id name } }
    teams { id name wallet { id } }
  }
}`;

export const CATALOGUE = `query DashboardCatalogue {
  plans { ...PlanFields }
  models { id tier }
}
${PLAN}`;

export const WALLET = `query DashboardWallet($id: ID!) {
  wallet(id: $id) {
    id ownerId timezone
    plan { ...PlanFields }
    scheduledPlan { ...PlanFields }
    balance { ...BalanceFields }
  }
}
${PLAN}
${BALANCE}`;

export const USAGE = `query DashboardUsage($id: ID!, $filter: UsageFilter, $first: Int, $after: String) {
  wallet(id: $id) {
    id
    usage(filter: $filter, first: $first, after: $after) {
      edges {
        cursor
        node {
          id threadId model memberId inputTokens cachedTokens outputTokens
          cost uncollected pricedBy at
        }
      }
      pageInfo { hasNextPage endCursor }
    }
  }
}`;

export const SUMMARY = `query DashboardSummary($id: ID!, $from: DateTime, $to: DateTime, $chartFrom: DateTime) {
  wallet(id: $id) {
    id
    byThread: usageSummary(groupBy: THREAD, from: $from, to: $to) { key credits events }
    byModel: usageSummary(groupBy: MODEL, from: $from, to: $to) { key credits events }
    perDay: usageSummary(groupBy: DAY, thenBy: MODEL, from: $chartFrom) { key subKey credits events }
  }
}`;

export const REVIEWS = `query DashboardReviews($id: ID!) {
  wallet(id: $id) { id reviews { ...ReviewFields } }
}
${REVIEW}`;

export const REVIEW_BY_ID = `query DashboardReview($id: ID!) {
  review(id: $id) { ...ReviewFields }
}
${REVIEW}`;

export const TEAM = `query DashboardTeam($id: ID!) {
  team(id: $id) {
    id name
    members { userId role dailyLimit periodLimit spentToday spentThisPeriod }
    wallet { id timezone plan { id name } balance { ...BalanceFields } }
  }
}
${BALANCE}`;

export const SET_MEMBER_LIMITS = `mutation DashboardSetMemberLimits(
  $teamId: ID!, $userId: String!, $dailyLimit: Credits, $periodLimit: Credits
) {
  setMemberLimits(teamId: $teamId, userId: $userId, dailyLimit: $dailyLimit, periodLimit: $periodLimit) {
    userId role dailyLimit periodLimit spentToday spentThisPeriod
  }
}`;

export const REPORT_HIGH_USAGE = `mutation DashboardReportHighUsage($input: HighUsageReportInput!) {
  reportHighUsage(input: $input) { ...ReviewFields }
}
${REVIEW}`;

export const BALANCE_CHANGED = `subscription DashboardBalance($walletId: ID!) {
  balanceChanged(walletId: $walletId) {
    walletId seq cause at
    balance { ...BalanceFields }
  }
}
${BALANCE}`;

export const REVIEW_UPDATED = `subscription DashboardReviewUpdated($reviewId: ID!) {
  reviewUpdated(reviewId: $reviewId) { ...ReviewFields }
}
${REVIEW}`;
