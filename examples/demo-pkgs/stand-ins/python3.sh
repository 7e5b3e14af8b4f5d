#!@shell@
# python3 (demo-pkgs): a stand-in interpreter. `python3 -c CODE` runs CODE's import
# statements, no more: a module is importable when it is in the site-packages of the
# environment that runs this interpreter (NIX_PYTHONPREFIX, which an environment's wrapper
# sets, as nixpkgs' does) or, run bare, of its own prefix, or in its standard library.
self=@out@
prefix=${NIX_PYTHONPREFIX:-$self}
for d in @deps@; do
  [ -e "$d" ] || { echo "python3: missing dependency $d" >&2; exit 1; }
done
case "$1" in
  -V|--version) echo "Python @version@"; exit 0 ;;
  -c) ;;
  *) echo "python3 @version@"; exit 0 ;;
esac

importable() {
  case "$1" in sys|builtins) return 0 ;; esac
  for dir in "$prefix/@libDir@/site-packages" "$self/@libDir@"; do
    if [ -e "$dir/$1/__init__.py" ] || [ -e "$dir/$1.py" ]; then return 0; fi
  done
  return 1
}

set -f
# A here-document, not a pipe: `exit` below leaves the script, not a subshell.
while IFS= read -r statement; do
  set -- $statement
  case "$1" in
    import) shift; names=$(printf '%s\n' "$*" | tr ',' '\n' | awk '{ print $1 }') ;;
    from) names=$2 ;;
    *) continue ;;
  esac
  for name in $names; do
    top=${name%%.*}
    case "$top" in
      ""|[0-9]*|*[!A-Za-z0-9_]*)
        printf '  File "<string>", line 1\nSyntaxError: invalid syntax\n' >&2; exit 1 ;;
    esac
    if ! importable "$top"; then
      printf 'Traceback (most recent call last):\n  File "<string>", line 1, in <module>\n' >&2
      printf "ModuleNotFoundError: No module named '%s'\n" "$top" >&2
      exit 1
    fi
  done
done <<EOF
$(printf '%s\n' "$2" | tr ';' '\n')
EOF
exit 0
