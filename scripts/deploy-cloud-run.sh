#!/usr/bin/env bash
# Deploys one image, by digest, to the Cloud Run service that scripts/gcp-bootstrap.sh created:
# first as the "candidate" revision with no traffic, then a smoke test through the candidate's
# own URL, then all traffic to it. .github/workflows/deploy.yml runs one subcommand per step:
#
#   scripts/deploy-cloud-run.sh candidate REGION-docker.pkg.dev/.../mlflow-server@sha256:...
#   scripts/deploy-cloud-run.sh smoke-test
#   scripts/deploy-cloud-run.sh promote
#
# Settings (repository variables, docs/deploy.md): GCP_PROJECT, GCP_PROJECT_NUMBER, GCP_REGION,
# CLOUD_RUN_SERVICE, CLOUDSQL_INSTANCE, GCP_RUNTIME_SA, and optionally MLFLOW_PUBLIC_URL (a
# custom domain) and MLFLOW_IAP=on (Google sign-in through Cloud Run's own IAP, which an
# operator turns on once; the roles come from the mlflow-iap-roles secret). The smoke-test
# password is read from Secret Manager and never leaves this process except on curl's
# standard input.
set -Eeuo pipefail

# One tag that moves from revision to revision: the candidate URL always shows the newest deploy
# and no old revision stays reachable at a tag URL of its own.
CANDIDATE_TAG=candidate
SMOKE_SECRET=mlflow-smoke-test-password
SMOKE_USER=smoke-test

say() { printf 'deploy-cloud-run: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

read_settings() {
	PROJECT=${GCP_PROJECT:?set GCP_PROJECT}
	PROJECT_NUMBER=${GCP_PROJECT_NUMBER:?set GCP_PROJECT_NUMBER}
	REGION=${GCP_REGION:?set GCP_REGION}
	SERVICE=${CLOUD_RUN_SERVICE:?set CLOUD_RUN_SERVICE}
	[[ $PROJECT_NUMBER =~ ^[0-9]+$ ]] || die "GCP_PROJECT_NUMBER is the project's number, not its id"
}

g() { gcloud --project "$PROJECT" --quiet "$@"; }

# ---------------------------------------------------------------- host names

# The URLs the service answers on: the deterministic https://SERVICE-NUMBER.REGION.run.app,
# the one Cloud Run reports (older projects get the hash form https://SERVICE-HASH-XX.a.run.app),
# and the custom domain.
public_urls() { # STATUS_URL
	local urls="https://$SERVICE-$PROJECT_NUMBER.$REGION.run.app"
	if [ -n "$1" ] && [ "$1" != "$urls" ]; then urls="$urls,$1"; fi
	if [ -n "${MLFLOW_PUBLIC_URL:-}" ]; then urls="$urls,$MLFLOW_PUBLIC_URL"; fi
	printf '%s' "$urls"
}

# The tag URLs of every run.app host (https://TAG---HOST): MLflow's Host check must accept the
# candidate's URL, in whichever form Cloud Run gives it.
tag_host_patterns() { # URLS (comma-separated)
	local url host patterns=()
	IFS=, read -r -a urls <<<"$1"
	for url in "${urls[@]}"; do
		host=${url#*://}
		host=${host%%/*}
		case "$host" in *.run.app) patterns+=("*---$host") ;; esac
	done
	(IFS=,; printf '%s' "${patterns[*]}")
}

# ---------------------------------------------------------------- the service's state

status_url() {
	g run services describe "$SERVICE" --region "$REGION" --format 'value(status.url)' ||
		die "no Cloud Run service $SERVICE in $REGION: scripts/gcp-bootstrap.sh creates it (docs/deploy.md)"
}

# FIELD (url or revisionName) of the traffic target that carries the candidate tag
candidate() {
	g run services describe "$SERVICE" --region "$REGION" --flatten status.traffic \
		--format 'csv[no-heading](status.traffic.tag,status.traffic.revisionName,status.traffic.url)' |
		awk -F, -v tag="$CANDIDATE_TAG" -v field="$1" \
			'$1 == tag { print (field == "revisionName" ? $2 : $3); exit }'
}

# tags other than the candidate's (left by earlier deploys, which tagged every commit)
stale_tags() {
	g run services describe "$SERVICE" --region "$REGION" --format 'value(spec.traffic[].tag)' |
		tr ';' '\n' | grep -v -x -e "$CANDIDATE_TAG" -e '' | paste -sd, - || true
}

# ---------------------------------------------------------------- the three steps

deploy_candidate() { # IMAGE@sha256:DIGEST
	local image=$1 url urls secrets env
	[[ $image =~ @sha256:[0-9a-f]{64}$ ]] || die "deploy an image by digest (IMAGE@sha256:...), not $image"
	: "${CLOUDSQL_INSTANCE:?set CLOUDSQL_INSTANCE}" "${GCP_RUNTIME_SA:?set GCP_RUNTIME_SA}"
	url=$(status_url)
	urls=$(public_urls "$url")
	say "deploying $image as revision tag $CANDIDATE_TAG, no traffic"
	# Secrets are files, one per folder (Cloud Run mounts one secret per folder), read through
	# the NAME_FILE variables. --use-http2: Cloud Run forwards requests as cleartext HTTP/2,
	# which lifts its 32 MiB limit on request bodies (docs/deploy.md, "Large artifacts").
	# --min/--max count the instances of the revisions that serve traffic: the candidate and
	# older revisions keep none. CPU stays allocated so MLflow's job runner works between
	# requests. The first instance of a new revision migrates the schema under the server's
	# Postgres advisory lock.
	secrets="/secrets/backend/uri=mlflow-backend-store-uri:latest,/secrets/artifacts/destination=mlflow-artifacts-destination:latest,/secrets/users/htpasswd=mlflow-auth-users:latest"
	env="MLFLOW_BACKEND_STORE_URI_FILE=/secrets/backend/uri|MLFLOW_ARTIFACTS_DESTINATION_FILE=/secrets/artifacts/destination|MLFLOW_AUTH_USERS_FILE=/secrets/users/htpasswd|MLFLOW_PUBLIC_URL=$urls|MLFLOW_SERVER_ALLOWED_HOSTS=$(tag_host_patterns "$urls")|FORWARDED_ALLOW_IPS=*|MLFLOW_HTTP2_CLEARTEXT=both|MLFLOW_TRUSTED_PROXY_HOPS=1|MLFLOW_WORKERS=2|MLFLOW_THREADS=8|MLFLOW_SQLALCHEMYSTORE_POOL_SIZE=4"
	if iap_on; then
		# Cloud Run's own IAP (turned on once by an operator, docs/deploy.md: a deploy keeps it)
		# signs each request it lets through for this audience
		secrets+=",/secrets/iap/roles=mlflow-iap-roles:latest"
		env+="|MLFLOW_IAP_AUDIENCE=/projects/$PROJECT_NUMBER/locations/$REGION/services/$SERVICE|MLFLOW_IAP_ROLES_FILE=/secrets/iap/roles"
	fi
	g run deploy "$SERVICE" --region "$REGION" \
		--image "$image" \
		--service-account "$GCP_RUNTIME_SA" \
		--set-cloudsql-instances "$CLOUDSQL_INSTANCE" \
		--set-secrets "$secrets" \
		--set-env-vars "^|^$env" \
		--execution-environment gen2 \
		--cpu 2 --memory 2Gi --cpu-boost --no-cpu-throttling \
		--concurrency 16 --min 1 --max 3 --max-instances 3 \
		--timeout 3600 \
		--port 8080 --use-http2 \
		--ingress all \
		--no-traffic --tag "$CANDIDATE_TAG" \
		--labels "managed-by=github-actions,commit=${GITHUB_SHA:-manual}" >/dev/null
	say "candidate: $(candidate revisionName) at $(candidate url)"
}

iap_on() { [ "${MLFLOW_IAP:-off}" = on ]; }

smoke_test() {
	local url password code
	url=$(candidate url)
	[ -n "$url" ] || die "the service has no revision tagged $CANDIDATE_TAG"
	if iap_on; then
		# IAP answers before the server: without a Google identity nothing gets through. (The
		# revision itself passed Cloud Run's start-up probe, or the deploy would have failed.)
		code=$(curl --silent --output /dev/null --write-out '%{http_code}' "$url/api/2.0/mlflow/experiments/search")
		case $code in 200 | 5*) die "with IAP on, an anonymous call got $code" ;; esac
		say "smoke test passed (IAP in front: an anonymous call got $code)"
		return
	fi
	password=$(g secrets versions access latest --secret "$SMOKE_SECRET")
	if [ -n "${GITHUB_ACTIONS:-}" ]; then echo "::add-mask::$password"; fi
	say "smoke test of $url"
	# /health is the one open path; it answers once the revision has started
	curl --fail --silent --show-error --retry 10 --retry-delay 3 --retry-all-errors --output /dev/null \
		"$url/health" || die "the candidate does not answer /health (its logs say why: docs/deploy.md)"
	# one authenticated API call: the credentials reach curl on standard input, not its arguments.
	# Transient answers (timeouts, 429, 5xx) are retried; a 401 is not: it will not change, and
	# each retry would count as a failed login
	printf 'user = "%s:%s"\n' "$SMOKE_USER" "$password" |
		curl --config - --fail --silent --show-error --retry 5 --retry-delay 3 --retry-connrefused \
			--output /dev/null "$url/api/2.0/mlflow/experiments/search?max_results=1" ||
		die "the smoke-test user cannot list experiments on the candidate"
	# and without credentials the candidate refuses
	code=$(curl --silent --output /dev/null --write-out '%{http_code}' "$url/api/2.0/mlflow/experiments/search?max_results=1")
	[ "$code" = 401 ] || die "an unauthenticated call got $code instead of 401"
	say "smoke test passed"
}

# All traffic to the candidate revision, by name: the revision that was tested is the one that
# serves, even if someone deployed another in between. Traffic then stays pinned to it.
promote() {
	local revision stale args
	revision=$(candidate revisionName)
	[ -n "$revision" ] || die "the service has no revision tagged $CANDIDATE_TAG"
	args=(--to-revisions "$revision=100")
	stale=$(stale_tags)
	if [ -n "$stale" ]; then args+=(--remove-tags "$stale"); fi
	say "moving all traffic to $revision"
	g run services update-traffic "$SERVICE" --region "$REGION" "${args[@]}" >/dev/null
}

_main() {
	read_settings
	case "${1:-}" in
	candidate) [ $# = 2 ] || die "usage: $0 candidate IMAGE@sha256:DIGEST"; deploy_candidate "$2" ;;
	smoke-test) smoke_test ;;
	promote) promote ;;
	*) die "usage: $0 candidate IMAGE@sha256:DIGEST | smoke-test | promote" ;;
	esac
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
	_main "$@"
fi
