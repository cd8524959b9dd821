# Source me (bash): the project's .venv + its colcon install + the source tree first on PYTHONPATH.
_eclm_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ ! -f "$_eclm_repo/install/setup.bash" ] || [ ! -x "$_eclm_repo/.venv/bin/python" ]; then
  echo "eclm_ros is not set up: run 'make setup' in $_eclm_repo" >&2
  return 1 2>/dev/null || exit 1
fi
# shellcheck disable=SC1091
. "$_eclm_repo/.venv/bin/activate"
export AMENT_PREFIX_PATH="$VIRTUAL_ENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
# colcon's setup scripts read unset variables: relax nounset around them.
case $- in *u*) _eclm_u=1; set +u ;; *) _eclm_u= ;; esac
# shellcheck disable=SC1091
. "$_eclm_repo/install/setup.bash"
[ -n "$_eclm_u" ] && set -u
export PYTHONPATH="$_eclm_repo${PYTHONPATH:+:$PYTHONPATH}"
export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
export ECLM_ROS_REPO="$_eclm_repo"
unset _eclm_repo _eclm_u
