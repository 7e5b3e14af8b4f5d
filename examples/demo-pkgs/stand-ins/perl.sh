#!@shell@
# perl (demo-pkgs): a stand-in interpreter. `perl -MNAME -e CODE` loads the modules
# it names, no more: a module loads when its file is in a directory of PERL5LIB (which an
# environment's wrapper sets, as nixpkgs' does) or in its own library.
self=@out@
inc="$PERL5LIB:$self/@libDir@"
for d in @deps@; do
  [ -e "$d" ] || { echo "perl: missing dependency $d" >&2; exit 1; }
done
modules=
ran=
while [ $# -gt 0 ]; do
  case "$1" in
    -v|--version) echo "This is perl 5, version 38, subversion 0 (v5.38.0) (demo-pkgs)"; exit 0 ;;
    -M*) modules="$modules ${1#-M}" ;;
    -e) shift; ran=1 ;;
  esac
  shift
done
if [ -z "$ran" ] && [ -z "$modules" ]; then echo "perl @version@"; exit 0; fi

set -f
for module in $modules; do
  module=${module%%=*}
  case "$module" in
    ""|*[!A-Za-z0-9_:]*) echo "syntax error at -e line 0, near \"use $module\"" >&2; exit 255 ;;
  esac
  file=$(printf '%s' "$module" | sed 's|::|/|g').pm
  found=
  IFS=:
  for dir in $inc; do
    if [ -n "$dir" ] && [ -f "$dir/$file" ]; then found=1; fi
  done
  unset IFS
  if [ -z "$found" ]; then
    printf "Can't locate %s in @INC (you may need to install the %s module) (@INC entries checked: %s).\n" \
      "$file" "$module" "$(printf '%s' "$inc" | tr ':' ' ')" >&2
    echo "BEGIN failed--compilation aborted." >&2
    exit 2
  fi
done
