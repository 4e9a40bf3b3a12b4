#!/usr/bin/env bash
# One-time Google Cloud set-up for the MLflow server on Cloud Run. gcloud only, idempotent:
# every resource is looked up first and created only when missing, so a second run creates
# nothing.
#
#   GCP_PROJECT=my-project GITHUB_REPOSITORY=owner/repo scripts/gcp-bootstrap.sh [--yes]
#
# Names come from these variables (defaults in brackets):
#   GCP_PROJECT (required)   GITHUB_REPOSITORY (required, owner/repo allowed to deploy)
#   GCP_REGION [europe-west1]          AR_REPOSITORY [mlflow]         CLOUD_RUN_SERVICE [mlflow]
#   GCS_BUCKET [$GCP_PROJECT-mlflow-artifacts]                         CLOUDSQL_INSTANCE [mlflow-pg]
#   CLOUDSQL_TIER [db-custom-1-3840]   DB_NAME [mlflow]   DB_USER [mlflow]
#   RUNTIME_SA_NAME [mlflow-runtime]   DEPLOYER_SA_NAME [mlflow-deployer]
#   WIF_POOL [github]                  WIF_PROVIDER [github-oidc]     DEPLOY_BRANCH [main]
#
# It prints the plan and asks before doing anything unless --yes is given. Generated passwords
# go straight into Secret Manager through standard input; they are never printed or logged.
set -Eeuo pipefail

say() { printf 'gcp-bootstrap: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

read_names() {
	: "${GCP_PROJECT:?set GCP_PROJECT}"
	: "${GITHUB_REPOSITORY:?set GITHUB_REPOSITORY (owner/repo)}"
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
	# the secrets the service mounts as files, and the smoke-test login only the deployer reads
	SECRET_BACKEND=mlflow-backend-store-uri
	SECRET_ARTIFACTS=mlflow-artifacts-destination
	SECRET_USERS=mlflow-auth-users
	SECRET_SMOKE=mlflow-smoke-test-password
}

g() { gcloud --project "$GCP_PROJECT" --quiet "$@"; }
exists() { g "$@" >/dev/null 2>&1; }
random_password() { head -c 48 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 32; }

plan() {
	cat >&2 <<PLAN
gcp-bootstrap will make sure these exist in project $GCP_PROJECT (region $REGION):
  - APIs: Cloud Run, Artifact Registry, Cloud SQL Admin, Secret Manager, IAM, STS
  - Artifact Registry Docker repository   $AR_REPOSITORY
  - GCS bucket                            gs://$BUCKET (uniform access, public access prevented)
  - Cloud SQL Postgres instance           $SQL_INSTANCE ($SQL_TIER), database $DB_NAME, user $DB_USER
  - secrets                               $SECRET_BACKEND, $SECRET_ARTIFACTS, $SECRET_USERS, $SECRET_SMOKE
  - runtime service account               $RUNTIME_SA
      Cloud SQL client (project); object admin on gs://$BUCKET only; secret accessor on the three server secrets only
  - deployer service account              $DEPLOYER_SA
      Cloud Run admin (project); Artifact Registry writer on $AR_REPOSITORY only;
      act as $RUNTIME_SA only; secret accessor on $SECRET_SMOKE only
  - Workload Identity pool/provider       $WIF_POOL/$WIF_PROVIDER, trusting GitHub's OIDC tokens of
                                          $GITHUB_REPOSITORY on refs/heads/$DEPLOY_BRANCH only
PLAN
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
		storage.googleapis.com
}

ensure_repository() {
	exists artifacts repositories describe "$AR_REPOSITORY" --location "$REGION" && return
	say "creating Artifact Registry repository $AR_REPOSITORY"
	g artifacts repositories create "$AR_REPOSITORY" --location "$REGION" --repository-format docker \
		--description "MLflow server images"
}

ensure_bucket() {
	exists storage buckets describe "gs://$BUCKET" && return
	say "creating bucket gs://$BUCKET"
	g storage buckets create "gs://$BUCKET" --location "$REGION" --uniform-bucket-level-access \
		--public-access-prevention
}

ensure_database() {
	if ! exists sql instances describe "$SQL_INSTANCE"; then
		say "creating Cloud SQL instance $SQL_INSTANCE (takes several minutes)"
		g sql instances create "$SQL_INSTANCE" --database-version POSTGRES_16 --tier "$SQL_TIER" \
			--region "$REGION" --edition enterprise --storage-auto-increase --backup-start-time 03:00 \
			--availability-type zonal
	fi
	exists sql databases describe "$DB_NAME" --instance "$SQL_INSTANCE" ||
		g sql databases create "$DB_NAME" --instance "$SQL_INSTANCE"
	if ! exists sql users describe "$DB_USER" --instance "$SQL_INSTANCE"; then
		say "creating database user $DB_USER and the backend URI secret"
		local password
		password=$(random_password)
		g sql users create "$DB_USER" --instance "$SQL_INSTANCE" --password "$password"
		# Cloud SQL's unix socket under /cloudsql, attached by the deploy (--add-cloudsql-instances)
		printf 'postgresql://%s:%s@/%s?host=/cloudsql/%s:%s:%s' "$DB_USER" "$password" "$DB_NAME" \
			"$GCP_PROJECT" "$REGION" "$SQL_INSTANCE" | ensure_secret "$SECRET_BACKEND" force
	fi
}

# ensure_secret NAME [force]: create the secret, and add the value read from stdin as its first
# version, unless it exists already (then stdin is ignored) or force is given.
ensure_secret() {
	local name=$1 force=${2:-}
	if exists secrets describe "$name"; then
		if [ -z "$force" ]; then cat >/dev/null; return; fi
	else
		say "creating secret $name"
		g secrets create "$name" --replication-policy automatic
	fi
	g secrets versions add "$name" --data-file=-
}

ensure_secrets() {
	printf 'gs://%s/artifacts' "$BUCKET" | ensure_secret "$SECRET_ARTIFACTS"
	if ! exists secrets describe "$SECRET_USERS"; then
		local admin smoke
		admin=$(random_password)
		smoke=$(random_password)
		printf 'admin:%s\nsmoke-test:%s\n' "$admin" "$smoke" | ensure_secret "$SECRET_USERS"
		printf '%s' "$smoke" | ensure_secret "$SECRET_SMOKE" force
		say "users: 'admin' and 'smoke-test'; read the admin password with:"
		say "  gcloud secrets versions access latest --secret $SECRET_USERS --project $GCP_PROJECT"
	fi
}

ensure_service_account() {
	local email=$1 title=$2
	exists iam service-accounts describe "$email" && return
	say "creating service account $email"
	g iam service-accounts create "${email%%@*}" --display-name "$title"
}

# The only role bindings: each at the narrowest level the resource allows.
bind_roles() {
	g projects add-iam-policy-binding "$GCP_PROJECT" --member "serviceAccount:$RUNTIME_SA" \
		--role roles/cloudsql.client --condition None >/dev/null
	g storage buckets add-iam-policy-binding "gs://$BUCKET" --member "serviceAccount:$RUNTIME_SA" \
		--role roles/storage.objectAdmin >/dev/null
	local secret
	for secret in "$SECRET_BACKEND" "$SECRET_ARTIFACTS" "$SECRET_USERS"; do
		g secrets add-iam-policy-binding "$secret" --member "serviceAccount:$RUNTIME_SA" \
			--role roles/secretmanager.secretAccessor >/dev/null
	done

	g projects add-iam-policy-binding "$GCP_PROJECT" --member "serviceAccount:$DEPLOYER_SA" \
		--role roles/run.admin --condition None >/dev/null
	g artifacts repositories add-iam-policy-binding "$AR_REPOSITORY" --location "$REGION" \
		--member "serviceAccount:$DEPLOYER_SA" --role roles/artifactregistry.writer >/dev/null
	g iam service-accounts add-iam-policy-binding "$RUNTIME_SA" --member "serviceAccount:$DEPLOYER_SA" \
		--role roles/iam.serviceAccountUser >/dev/null
	g secrets add-iam-policy-binding "$SECRET_SMOKE" --member "serviceAccount:$DEPLOYER_SA" \
		--role roles/secretmanager.secretAccessor >/dev/null
}

ensure_workload_identity() {
	if ! exists iam workload-identity-pools describe "$WIF_POOL" --location global; then
		say "creating Workload Identity pool $WIF_POOL"
		g iam workload-identity-pools create "$WIF_POOL" --location global --display-name "GitHub Actions"
	fi
	if ! exists iam workload-identity-pools providers describe "$WIF_PROVIDER" --location global \
		--workload-identity-pool "$WIF_POOL"; then
		say "creating Workload Identity provider $WIF_PROVIDER for $GITHUB_REPOSITORY"
		g iam workload-identity-pools providers create-oidc "$WIF_PROVIDER" --location global \
			--workload-identity-pool "$WIF_POOL" --issuer-uri https://token.actions.githubusercontent.com \
			--attribute-mapping google.subject=assertion.sub,attribute.repository=assertion.repository,attribute.ref=assertion.ref \
			--attribute-condition "assertion.repository == '$GITHUB_REPOSITORY' && assertion.ref == 'refs/heads/$DEPLOY_BRANCH'"
	fi
	local number
	number=$(g projects describe "$GCP_PROJECT" --format 'value(projectNumber)')
	POOL_NAME=projects/$number/locations/global/workloadIdentityPools/$WIF_POOL
	g iam service-accounts add-iam-policy-binding "$DEPLOYER_SA" --role roles/iam.workloadIdentityUser \
		--member "principalSet://iam.googleapis.com/$POOL_NAME/attribute.repository/$GITHUB_REPOSITORY" >/dev/null
}

print_variables() {
	cat <<VARS
Done. Set these GitHub repository variables (Settings > Secrets and variables > Actions > Variables):
  GCP_PROJECT=$GCP_PROJECT
  GCP_REGION=$REGION
  AR_REPOSITORY=$AR_REPOSITORY
  CLOUD_RUN_SERVICE=$SERVICE
  CLOUDSQL_INSTANCE=$GCP_PROJECT:$REGION:$SQL_INSTANCE
  GCP_WIF_PROVIDER=$POOL_NAME/providers/$WIF_PROVIDER
  GCP_DEPLOYER_SA=$DEPLOYER_SA
  GCP_RUNTIME_SA=$RUNTIME_SA
VARS
}

_main() {
	for arg in "$@"; do
		case "$arg" in
		--yes | -y) ASSUME_YES=1 ;;
		-h | --help) sed -n '2,20p' "$0"; exit 0 ;;
		*) die "unknown argument $arg" ;;
		esac
	done
	command -v gcloud >/dev/null || die "gcloud is not installed"
	read_names
	plan
	confirm
	enable_apis
	ensure_repository
	ensure_bucket
	ensure_secrets
	ensure_database
	ensure_service_account "$RUNTIME_SA" "MLflow server (Cloud Run runtime)"
	ensure_service_account "$DEPLOYER_SA" "MLflow deployer (GitHub Actions)"
	bind_roles
	ensure_workload_identity
	print_variables
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
	_main "$@"
fi
