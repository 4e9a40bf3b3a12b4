#!/usr/bin/env bash
# One-time Google Cloud set-up for the MLflow server on Cloud Run (docs/deploy.md). gcloud and
# curl only. Convergent: every step looks at what is there and completes what is missing, so a
# run after a failure at any step ends in the same state as a clean run, and a run on a complete
# project changes nothing.
#
#   export GCP_PROJECT=my-project GITHUB_REPOSITORY=owner/repo \
#          GITHUB_REPOSITORY_ID=123456789 GITHUB_REPOSITORY_OWNER_ID=987654
#   scripts/gcp-bootstrap.sh            # prints the plan and asks
#   scripts/gcp-bootstrap.sh --yes      # no prompt
#   scripts/gcp-bootstrap.sh --rotate-database-password
#   IAP_ADMIN=you@example.com scripts/gcp-bootstrap.sh --iap   # Google sign-in through IAP too
#
# Names come from these variables (defaults in brackets):
#   GCP_PROJECT (required)   GITHUB_REPOSITORY (required, owner/repo allowed to deploy)
#   GITHUB_REPOSITORY_ID, GITHUB_REPOSITORY_OWNER_ID (required: GitHub's numeric ids, which,
#     unlike names, are never reused: gh api repos/OWNER/REPO --jq '.id, .owner.id')
#   GCP_REGION [europe-west1]          AR_REPOSITORY [mlflow]         CLOUD_RUN_SERVICE [mlflow]
#   GCS_BUCKET [$GCP_PROJECT-mlflow-artifacts]                         CLOUDSQL_INSTANCE [mlflow-pg]
#   CLOUDSQL_TIER [db-custom-1-3840]   DB_NAME [mlflow]   DB_USER [mlflow]
#   RUNTIME_SA_NAME [mlflow-runtime]   DEPLOYER_SA_NAME [mlflow-deployer]
#   WIF_POOL [github]                  WIF_PROVIDER [github-oidc]     DEPLOY_BRANCH [main]
#   KEEP_IMAGES [20] (the Artifact Registry cleanup policy keeps this many recent images)
#   IAP_ADMIN (with --iap: the Google account that gets in first, as the server's admin)
#
# Secrets never pass through an argument list, a log or the terminal: generated passwords go to
# Secret Manager on standard input, and the database password reaches Cloud SQL in a request
# body that curl reads from standard input.
set -Eeuo pipefail

say() { printf 'gcp-bootstrap: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# The Cloud Run service starts as Google's sample container, so that the deploy only ever
# updates it; the first push to main replaces it.
PLACEHOLDER_IMAGE=us-docker.pkg.dev/cloudrun/container/hello
SQLADMIN_API=${SQLADMIN_API:-https://sqladmin.googleapis.com/v1}

read_names() {
	: "${GCP_PROJECT:?set GCP_PROJECT}"
	: "${GITHUB_REPOSITORY:?set GITHUB_REPOSITORY (owner/repo)}"
	: "${GITHUB_REPOSITORY_ID:?set GITHUB_REPOSITORY_ID (gh api repos/$GITHUB_REPOSITORY --jq .id)}"
	: "${GITHUB_REPOSITORY_OWNER_ID:?set GITHUB_REPOSITORY_OWNER_ID (gh api repos/$GITHUB_REPOSITORY --jq .owner.id)}"
	[[ $GITHUB_REPOSITORY_ID =~ ^[0-9]+$ && $GITHUB_REPOSITORY_OWNER_ID =~ ^[0-9]+$ ]] ||
		die "GITHUB_REPOSITORY_ID and GITHUB_REPOSITORY_OWNER_ID are numbers"
	REGION=${GCP_REGION:-europe-west1}
	AR_REPOSITORY=${AR_REPOSITORY:-mlflow}
	SERVICE=${CLOUD_RUN_SERVICE:-mlflow}
	BUCKET=${GCS_BUCKET:-${GCP_PROJECT}-mlflow-artifacts}
	SQL_INSTANCE=${CLOUDSQL_INSTANCE:-mlflow-pg}
	SQL_TIER=${CLOUDSQL_TIER:-db-custom-1-3840}
	DB_NAME=${DB_NAME:-mlflow}
	DB_USER=${DB_USER:-mlflow}
	RUNTIME_SA=${RUNTIME_SA_NAME:-mlflow-runtime}@${GCP_PROJECT}.iam.gserviceaccount.com
	DEPLOYER_SA=${DEPLOYER_SA_NAME:-mlflow-deployer}@${GCP_PROJECT}.iam.gserviceaccount.com
	WIF_POOL=${WIF_POOL:-github}
	WIF_PROVIDER=${WIF_PROVIDER:-github-oidc}
	DEPLOY_BRANCH=${DEPLOY_BRANCH:-main}
	KEEP_IMAGES=${KEEP_IMAGES:-20}
	# the secrets the service mounts as files, and the smoke-test password only the deployer reads
	SECRET_BACKEND=mlflow-backend-store-uri
	SECRET_ARTIFACTS=mlflow-artifacts-destination
	SECRET_USERS=mlflow-auth-users
	SECRET_SMOKE=mlflow-smoke-test-password
	SMOKE_USER="smoke-test"
	SECRET_IAP_ROLES=mlflow-iap-roles
	if [ -n "${WITH_IAP:-}" ]; then
		[[ ${IAP_ADMIN:-} =~ ^[^@[:space:]]+@[^@[:space:]]+$ ]] || die "--iap needs IAP_ADMIN=you@example.com"
	fi
}

g() { gcloud --project "$GCP_PROJECT" --quiet "$@"; }
exists() { g "$@" >/dev/null 2>&1; }
random_password() { head -c 48 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 32; }

plan() {
	cat >&2 <<PLAN
gcp-bootstrap will make sure these exist in project $GCP_PROJECT (region $REGION):
  - APIs: Cloud Run, Artifact Registry, Cloud SQL Admin, Secret Manager, IAM, IAM credentials, STS, Storage
  - Artifact Registry Docker repository   $AR_REPOSITORY (cleanup: keeps the $KEEP_IMAGES newest images)
  - GCS bucket                            gs://$BUCKET (uniform access, public access prevented)
  - Cloud SQL Postgres instance           $SQL_INSTANCE ($SQL_TIER; deletion protection, daily
                                          backups, point-in-time recovery), database $DB_NAME, user $DB_USER
  - secrets                               $SECRET_BACKEND, $SECRET_ARTIFACTS, $SECRET_USERS, $SECRET_SMOKE
  - runtime service account               $RUNTIME_SA
      Cloud SQL client (project); object admin on gs://$BUCKET only; secret accessor on the three server secrets only
  - deployer service account              $DEPLOYER_SA
      Cloud Run developer (project); Artifact Registry writer on $AR_REPOSITORY only;
      act as $RUNTIME_SA only; secret accessor on $SECRET_SMOKE only
  - Cloud Run service                     $SERVICE (public: Cloud Run's invoker check off, the server
                                          authenticates), a placeholder until the first deploy
  - Workload Identity pool/provider       $WIF_POOL/$WIF_PROVIDER, trusting GitHub's OIDC tokens of
                                          repository id $GITHUB_REPOSITORY_ID ($GITHUB_REPOSITORY), its
                                          deploy workflow on refs/heads/$DEPLOY_BRANCH, environment production
PLAN
	if [ -n "${WITH_IAP:-}" ]; then
		cat >&2 <<PLAN
  - IAP on the Cloud Run service          $SERVICE (Google sign-in); $IAP_ADMIN may pass it
                                          (roles/iap.httpsResourceAccessor) and is the server's admin
  - secret                                $SECRET_IAP_ROLES ([admin] $IAP_ADMIN when it is new; the team's after)
PLAN
	fi
}

confirm() {
	[ "${ASSUME_YES:-}" = 1 ] && return 0
	[ -t 0 ] || die "not a terminal: re-run with --yes to proceed without a prompt"
	read -r -p "Proceed? [y/N] " answer
	[ "$answer" = y ] || [ "$answer" = Y ] || die "nothing done"
}

enable_apis() {
	g services enable run.googleapis.com artifactregistry.googleapis.com sqladmin.googleapis.com \
		secretmanager.googleapis.com iam.googleapis.com iamcredentials.googleapis.com sts.googleapis.com \
		storage.googleapis.com ${WITH_IAP:+iap.googleapis.com}
}

ensure_repository() {
	if ! exists artifacts repositories describe "$AR_REPOSITORY" --location "$REGION"; then
		say "creating Artifact Registry repository $AR_REPOSITORY"
		g artifacts repositories create "$AR_REPOSITORY" --location "$REGION" --repository-format docker \
			--description "MLflow server images"
	fi
	# One image per push to main: keep the newest (rollback targets), delete the rest after a week.
	# Setting the policies is declarative, so every run states them again.
	cleanup_policy | g artifacts repositories set-cleanup-policies "$AR_REPOSITORY" --location "$REGION" \
		--policy /dev/stdin --no-dry-run >/dev/null
}

cleanup_policy() {
	cat <<POLICY
[
  {"name": "keep-recent", "action": {"type": "Keep"}, "mostRecentVersions": {"keepCount": $KEEP_IMAGES}},
  {"name": "delete-old", "action": {"type": "Delete"}, "condition": {"olderThan": "7d"}}
]
POLICY
}

ensure_bucket() {
	exists storage buckets describe "gs://$BUCKET" && return
	say "creating bucket gs://$BUCKET"
	g storage buckets create "gs://$BUCKET" --location "$REGION" --uniform-bucket-level-access \
		--public-access-prevention
}

# ---------------------------------------------------------------- secrets

ensure_secret_resource() {
	exists secrets describe "$1" && return
	say "creating secret $1"
	g secrets create "$1" --replication-policy automatic
}

has_version() { exists secrets versions describe latest --secret "$1"; }
read_secret() { g secrets versions access latest --secret "$1"; }
add_version() { g secrets versions add "$1" --data-file=- >/dev/null; }

ensure_smoke_password() {
	ensure_secret_resource "$SECRET_SMOKE"
	has_version "$SECRET_SMOKE" && return
	say "generating the smoke-test password"
	random_password | add_version "$SECRET_SMOKE"
}

# The users secret holds 'admin' and the smoke-test user; the smoke-test line is kept equal to
# the password the deploy reads, whatever else the team changes in the file, and stays last,
# under its own [viewer] line: the smoke test only reads, so its password can change nothing.
ensure_users() {
	ensure_secret_resource "$SECRET_USERS"
	local smoke users wanted
	smoke=$(read_secret "$SECRET_SMOKE")
	if ! has_version "$SECRET_USERS"; then
		say "generating the users 'admin' and '$SMOKE_USER'"
		printf '%s\n' "$(users_with_smoke_line "admin:$(random_password)" "$smoke")" | add_version "$SECRET_USERS"
		return
	fi
	users=$(read_secret "$SECRET_USERS")
	wanted=$(users_with_smoke_line "$users" "$smoke")
	[ "$users" = "$wanted" ] && return
	say "setting the $SMOKE_USER line of $SECRET_USERS"
	printf '%s\n' "$wanted" | add_version "$SECRET_USERS"
}

# The IAP roles (server/gate/iap.py) start with IAP_ADMIN as the one admin; after that the file is the
# team's (docs/deploy.md, "Google sign-in (IAP)"), never rewritten here.
ensure_iap_roles() {
	ensure_secret_resource "$SECRET_IAP_ROLES"
	has_version "$SECRET_IAP_ROLES" && return
	say "starting $SECRET_IAP_ROLES with $IAP_ADMIN as its admin"
	printf '[admin]\n%s\n' "$IAP_ADMIN" | add_version "$SECRET_IAP_ROLES"
}

users_with_smoke_line() { # USERS SMOKE_PASSWORD: the file with the smoke line last, as a viewer
	local rest
	rest=$(grep -v "^$SMOKE_USER:" <<<"$1" || true)
	rest=$(sed -e :a -e '/^\n*$/{$d;N;ba' -e '}' <<<"$rest")  # no trailing blank lines
	[ "$(tail -n 1 <<<"$rest")" = "[viewer]" ] && rest=$(sed '$d' <<<"$rest")
	printf '%s\n[viewer]\n%s:%s' "$rest" "$SMOKE_USER" "$2"
}

ensure_artifacts_destination() {
	ensure_secret_resource "$SECRET_ARTIFACTS"
	has_version "$SECRET_ARTIFACTS" || printf 'gs://%s/artifacts' "$BUCKET" | add_version "$SECRET_ARTIFACTS"
}

# ---------------------------------------------------------------- Cloud SQL

ensure_instance() {
	if ! exists sql instances describe "$SQL_INSTANCE"; then
		say "creating Cloud SQL instance $SQL_INSTANCE (takes several minutes)"
		g sql instances create "$SQL_INSTANCE" --database-version POSTGRES_16 --tier "$SQL_TIER" \
			--region "$REGION" --edition enterprise --storage-auto-increase --availability-type zonal \
			--backup-start-time 03:00 --enable-point-in-time-recovery --deletion-protection
		return
	fi
	local protected
	protected=$(g sql instances describe "$SQL_INSTANCE" \
		--format 'value(settings.deletionProtectionEnabled,settings.backupConfiguration.pointInTimeRecoveryEnabled)')
	[ "$protected" = $'True\tTrue' ] && return
	say "turning on deletion protection and point-in-time recovery for $SQL_INSTANCE"
	g sql instances patch "$SQL_INSTANCE" --backup-start-time 03:00 --enable-point-in-time-recovery \
		--deletion-protection
}

backend_uri() { # PASSWORD: the URI of the Cloud SQL unix socket the deploy attaches under /cloudsql
	printf 'postgresql://%s:%s@/%s?host=/cloudsql/%s:%s:%s' "$DB_USER" "$1" "$DB_NAME" \
		"$GCP_PROJECT" "$REGION" "$SQL_INSTANCE"
}

uri_password() { # the password part of a backend URI on stdin
	local uri
	uri=$(cat)
	uri=${uri#*://*:}
	printf '%s' "${uri%%@*}"
}

# Create the database user, or set its password: Cloud SQL's REST API, with the request (token
# and password) given to curl on standard input. `gcloud sql users create --password` would put
# the password in the process list and in gcloud's own log file.
put_db_user() { # METHOD PASSWORD
	local method=$1 password=$2 url token response
	url="$SQLADMIN_API/projects/$GCP_PROJECT/instances/$SQL_INSTANCE/users"
	[ "$method" = PUT ] && url="$url?name=$DB_USER"
	token=$(gcloud auth print-access-token)
	# Cloud SQL's answer (an operation, or an error) never contains the password
	response=$(printf 'request = "%s"\nurl = "%s"\nheader = "Authorization: Bearer %s"\nheader = "Content-Type: application/json"\ndata = "{\\"name\\": \\"%s\\", \\"password\\": \\"%s\\"}"\n' \
		"$method" "$url" "$token" "$DB_USER" "$password" |
		curl --config - --silent --show-error --fail-with-body) || die "Cloud SQL refused to set the password of $DB_USER: $response"
}

# The backend URI secret is the source of truth for the database password: it is written first,
# then the database user is made to match it on every run (a no-op when it already does).
ensure_database() {
	ensure_instance
	exists sql databases describe "$DB_NAME" --instance "$SQL_INSTANCE" ||
		g sql databases create "$DB_NAME" --instance "$SQL_INSTANCE"
	ensure_secret_resource "$SECRET_BACKEND"
	if ! has_version "$SECRET_BACKEND" || [ "${ROTATE_DB_PASSWORD:-}" = 1 ]; then
		say "generating the database password into $SECRET_BACKEND"
		backend_uri "$(random_password)" | add_version "$SECRET_BACKEND"
	fi
	local password
	password=$(read_secret "$SECRET_BACKEND" | uri_password)
	if exists sql users describe "$DB_USER" --instance "$SQL_INSTANCE"; then
		put_db_user PUT "$password"
	else
		say "creating database user $DB_USER"
		put_db_user POST "$password"
	fi
}

# ---------------------------------------------------------------- identities and access

ensure_service_account() {
	local email=$1 title=$2
	exists iam service-accounts describe "$email" && return
	say "creating service account $email"
	g iam service-accounts create "${email%%@*}" --display-name "$title"
}

# The only role bindings: each at the narrowest level the resource allows. Adding a binding that
# exists is a no-op in IAM, so every run states them all.
bind_roles() {
	g projects add-iam-policy-binding "$GCP_PROJECT" --member "serviceAccount:$RUNTIME_SA" \
		--role roles/cloudsql.client --condition None >/dev/null
	g storage buckets add-iam-policy-binding "gs://$BUCKET" --member "serviceAccount:$RUNTIME_SA" \
		--role roles/storage.objectAdmin >/dev/null
	local secret
	for secret in "$SECRET_BACKEND" "$SECRET_ARTIFACTS" "$SECRET_USERS" ${WITH_IAP:+"$SECRET_IAP_ROLES"}; do
		g secrets add-iam-policy-binding "$secret" --member "serviceAccount:$RUNTIME_SA" \
			--role roles/secretmanager.secretAccessor >/dev/null
	done

	# run.developer deploys and moves traffic but cannot change who may invoke a service
	g projects add-iam-policy-binding "$GCP_PROJECT" --member "serviceAccount:$DEPLOYER_SA" \
		--role roles/run.developer --condition None >/dev/null
	g artifacts repositories add-iam-policy-binding "$AR_REPOSITORY" --location "$REGION" \
		--member "serviceAccount:$DEPLOYER_SA" --role roles/artifactregistry.writer >/dev/null
	g iam service-accounts add-iam-policy-binding "$RUNTIME_SA" --member "serviceAccount:$DEPLOYER_SA" \
		--role roles/iam.serviceAccountUser >/dev/null
	g secrets add-iam-policy-binding "$SECRET_SMOKE" --member "serviceAccount:$DEPLOYER_SA" \
		--role roles/secretmanager.secretAccessor >/dev/null
}

# The service exists before the first deploy, public through Cloud Run's "invoker IAM check off"
# (allowed under the "Domain restricted sharing" org policy, unlike an allUsers binding), so the
# deployer never needs the right to change a service's IAM policy.
ensure_service() {
	if ! exists run services describe "$SERVICE" --region "$REGION"; then
		say "creating the Cloud Run service $SERVICE (a placeholder until the first deploy)"
		g run deploy "$SERVICE" --region "$REGION" --image "$PLACEHOLDER_IMAGE" \
			--service-account "$RUNTIME_SA" --no-invoker-iam-check --ingress internal \
			--min-instances 0 --max-instances 1 --labels managed-by=gcp-bootstrap >/dev/null
		return
	fi
	g run services update "$SERVICE" --region "$REGION" --no-invoker-iam-check >/dev/null
}

# Cloud Run's own IAP in front of the service. Turning it on takes run.admin (this operator's,
# not the deployer's), and every deploy keeps it. The service's invoker IAM check is off (above),
# so IAP's service agent needs no run.invoker binding; IAP itself lets in only the accounts with
# roles/iap.httpsResourceAccessor.
ensure_iap() {
	g run services update "$SERVICE" --region "$REGION" --iap >/dev/null
	g iap web add-iam-policy-binding --region "$REGION" --resource-type cloud-run --service "$SERVICE" \
		--member "user:$IAP_ADMIN" --role roles/iap.httpsResourceAccessor >/dev/null
}

wif_condition() {
	printf "assertion.repository_id == '%s' && assertion.repository_owner_id == '%s'" \
		"$GITHUB_REPOSITORY_ID" "$GITHUB_REPOSITORY_OWNER_ID"
	printf " && assertion.ref == 'refs/heads/%s'" "$DEPLOY_BRANCH"
	printf " && assertion.workflow_ref == '%s/.github/workflows/deploy.yml@refs/heads/%s'" \
		"$GITHUB_REPOSITORY" "$DEPLOY_BRANCH"
	printf " && assertion.environment == 'production'"
}

ensure_workload_identity() {
	if ! exists iam workload-identity-pools describe "$WIF_POOL" --location global; then
		say "creating Workload Identity pool $WIF_POOL"
		g iam workload-identity-pools create "$WIF_POOL" --location global --display-name "GitHub Actions"
	fi
	local verb=update-oidc mapping
	mapping=google.subject=assertion.sub,attribute.repository_id=assertion.repository_id
	if ! exists iam workload-identity-pools providers describe "$WIF_PROVIDER" --location global \
		--workload-identity-pool "$WIF_POOL"; then
		say "creating Workload Identity provider $WIF_PROVIDER for $GITHUB_REPOSITORY"
		verb=create-oidc
		set -- --issuer-uri https://token.actions.githubusercontent.com
	fi
	# the condition is stated on every run, so an older, looser one is replaced
	g iam workload-identity-pools providers "$verb" "$WIF_PROVIDER" --location global \
		--workload-identity-pool "$WIF_POOL" "$@" --attribute-mapping "$mapping" \
		--attribute-condition "$(wif_condition)" >/dev/null
	# the pool's full name carries the project number (no Resource Manager API needed)
	POOL_NAME=$(g iam workload-identity-pools describe "$WIF_POOL" --location global --format 'value(name)')
	PROJECT_NUMBER=$(cut -d/ -f2 <<<"$POOL_NAME")
	g iam service-accounts add-iam-policy-binding "$DEPLOYER_SA" --role roles/iam.workloadIdentityUser \
		--member "principalSet://iam.googleapis.com/$POOL_NAME/attribute.repository_id/$GITHUB_REPOSITORY_ID" >/dev/null
}

print_variables() {
	local name value
	printf 'Done. Set the GitHub repository variables (names, not secrets) with the GitHub CLI:\n'
	while read -r name value; do
		[ -n "$name" ] || continue
		printf '  gh variable set %s --repo %s --body %s\n' "$name" "$GITHUB_REPOSITORY" "$value"
	done <<VARS
GCP_PROJECT $GCP_PROJECT
GCP_PROJECT_NUMBER $PROJECT_NUMBER
GCP_REGION $REGION
AR_REPOSITORY $AR_REPOSITORY
CLOUD_RUN_SERVICE $SERVICE
CLOUDSQL_INSTANCE $GCP_PROJECT:$REGION:$SQL_INSTANCE
GCP_WIF_PROVIDER $POOL_NAME/providers/$WIF_PROVIDER
GCP_DEPLOYER_SA $DEPLOYER_SA
GCP_RUNTIME_SA $RUNTIME_SA
${WITH_IAP:+MLFLOW_IAP on}
VARS
}

_main() {
	for arg in "$@"; do
		case "$arg" in
		--yes | -y) ASSUME_YES=1 ;;
		--rotate-database-password) ROTATE_DB_PASSWORD=1 ;;
		--iap) WITH_IAP=1 ;;
		-h | --help) sed -n '2,29p' "$0"; exit 0 ;;
		*) die "unknown argument $arg" ;;
		esac
	done
	command -v gcloud >/dev/null || die "gcloud is not installed"
	command -v curl >/dev/null || die "curl is not installed"
	read_names
	plan
	confirm
	enable_apis
	ensure_repository
	ensure_bucket
	ensure_smoke_password
	ensure_users
	if [ -n "${WITH_IAP:-}" ]; then ensure_iap_roles; fi
	ensure_artifacts_destination
	ensure_database
	ensure_service_account "$RUNTIME_SA" "MLflow server (Cloud Run runtime)"
	ensure_service_account "$DEPLOYER_SA" "MLflow deployer (GitHub Actions)"
	bind_roles
	ensure_service
	if [ -n "${WITH_IAP:-}" ]; then ensure_iap; fi
	ensure_workload_identity
	print_variables
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
	_main "$@"
fi
