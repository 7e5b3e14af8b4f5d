# Resolves the package names of an image request against a package set and
# prints the derivations to build. Used by the registry as:
#
#   nix-instantiate --eval --strict --json --read-write-mode \
#     prepare-image/default.nix -A plan \
#     --argstr srcPath /abs/path/to/package-set \
#     --argstr packages '["hello","python3packages.requests"]' \
#     --argstr system x86_64-linux
#
# The package list arrives as JSON data and is never spliced into Nix code.
# Only builtins are used, so this works with nixpkgs and the demo set alike.
#
# A flake (a set whose root holds flake.nix) is read in two steps instead:
#  1. restricted, with srcPath: -A flakeSource copies the set into the store as
#     "source" (without .git) and this directory too, and says which inputs
#     flake.nix declares that its flake.lock does not pin;
#  2. pure (pure-eval, flakes enabled), from the store: this file fetched by
#     its NAR hash (pure evaluation reads nothing else), with
#     --argstr flakeRef 'path:/nix/store/...-source?narHash=...&rev=...'.
#     The set is then packages.<system> over legacyPackages.<system>; names in
#     `optional` (JSON: what every image holds, the shell's) that the flake
#     lacks are left out and listed as `absent` instead of failing.
#
# Output (JSON):
#   { "nixTooOld": { required, running } } when the set's lib/minver.nix (as
#     nixpkgs has) asks for a newer Nix than this one: checked before the set
#     is imported, whose own check would only abort;
#   { "missing": [ <names not found, input order> ], "packages": [] }
# or, when nothing is missing,
#   { "missing": [], "absent": [ <optional names not found> ],
#     "packages": [ { name, attrPath, drvPath, out, mainProgram }, ... ],
#     "environments": [ { language, interpreter, members, contents, packages, drvPath, out,
#                         mainProgram }, ... ],
#     (`contents`: the store paths of the set's packages the name asks for; `packages`:
#      those packages' own { name, drvPath, out, mainProgram })
#     "plain": [ <names of nested sets' packages that are no interpreter's modules> ],
#     "meta": [ { path, pname, version, description, homepage, licenses }, ... ] }
# or, when two interpreters of one language are asked for,
#   { "missing": [], "packages": [], "conflicts": [ [ { interpreter, names }, ... ], ... ] }
# A package of an environment (and the interpreter itself, asked for by its top-level
# name) has the environment's drvPath and out (the image holds the environment in its
# place) and its own mainProgram.
# `meta` describes the outputs of the packages and of the derivations they
# take as inputs (buildInputs, propagatedBuildInputs, and the demo set's
# deps), as far as the package set's `meta` knows them: the SBOM's data.
# An entry whose meta throws is left out rather than failing the build.
# With -A names instead (packages = "[]"): the set's attribute names for the
# registry's search box, the top level and one level into each *Packages set.
# `out` is the default output's store path. It cannot be called `outPath`:
# Nix's JSON printer replaces any attribute set that has an `outPath` with
# that string. `mainProgram` is the package's meta.mainProgram when it is a
# string, else null: read as data, for the image's entrypoint.
# --read-write-mode makes forcing drvPath write the .drv files to the store,
# so they can be realised afterwards.
{ srcPath ? "", flakeRef ? "", packages ? "[]", optional ? "[]"
, system ? builtins.currentSystem, ... }:

let
  isFlake = flakeRef != "";
  flake = builtins.getFlake flakeRef;
  pkgs = if isFlake
    then (flake.legacyPackages.${system} or { }) // (flake.packages.${system} or { })
    else import srcPath { inherit system; };
  names = builtins.fromJSON packages;
  optionalNames = builtins.fromJSON optional;

  upperChars = builtins.genList (i: builtins.substring i 1 "ABCDEFGHIJKLMNOPQRSTUVWXYZ") 26;
  lowerChars = builtins.genList (i: builtins.substring i 1 "abcdefghijklmnopqrstuvwxyz") 26;
  toLower = builtins.replaceStrings upperChars lowerChars;

  # builtins.split also returns the separators (as lists); keep the strings.
  splitDots = s: builtins.filter builtins.isString (builtins.split "\\." s);

  # One step of the walk. `state` is { ok, throws, path, value }:
  #  - ok = false: not found (stays not found);
  #  - throws = true: some value on the way throws; stop walking and keep it
  #    so that evaluating drvPath later reports Nix's own error.
  step = state: seg:
    if !state.ok || state.throws then state
    else
      let
        isSet = builtins.tryEval (builtins.isAttrs state.value);
        set = state.value;
        # Case-insensitive fallback; attrNames is sorted, so the first match
        # is deterministic.
        matches = builtins.filter (n: toLower n == toLower seg) (builtins.attrNames set);
        found = attr: state // {
          path = state.path ++ [ attr ];
          value = set.${attr};
          parent = set;
        };
      in
      if !isSet.success then state // { throws = true; }
      else if seg == "" || !isSet.value then state // { ok = false; }
      else if builtins.hasAttr seg set then found seg
      else if matches != [ ] then found (builtins.head matches)
      else state // { ok = false; };

  resolve = name:
    let
      walked = builtins.foldl' step
        { ok = true; throws = false; path = [ ]; value = pkgs; parent = null; }
        (splitDots name);
      # A value that throws counts as present: its error surfaces when its
      # drvPath is forced below instead of being hidden as "missing".
      isDrv = builtins.tryEval
        (builtins.isAttrs walked.value && (walked.value.type or null) == "derivation");
    in {
      inherit name;
      inherit (walked) path value parent;
      ok = walked.ok && (walked.throws || !isDrv.success || isDrv.value);
    };

  tried = map resolve names;
  isOptional = r: !r.ok && builtins.elem r.name optionalNames;
  absent = map (r: r.name) (builtins.filter isOptional tried);
  resolved = builtins.filter (r: !isOptional r) tried;
  missing = map (r: r.name) (builtins.filter (r: !r.ok) resolved);

  # Language environments. A package of a nested set (python3Packages.requests) joins the
  # environment of its interpreter when the package itself says it is one of its modules, as
  # nixpkgs marks them (its own hasPythonModule, hasPerlModule...): a `pythonModule` that is
  # its set's `python`, `perlModule`, `luaModule`, `isHaskellLibrary`, or a gem's `isRubyGem`
  # and `ruby`. The interpreter is the one it names, else its set's (haskellPackages.ghc, whose
  # `withPackages` is ghcWithPackages); it must be a derivation with `withPackages`. A parent
  # that is a derivation (nodejs.libv8) or a whole package set holding interpreters
  # (pkgsStatic.hello) proves nothing: only the package's marker counts. So a new interpreter
  # version (python314Packages) needs no change here; the five language names are the table.
  interpreterNames = [ "python" "perl" "lua" "ruby" "ghc" ];
  # A derivation's identity, usable as an attribute name.
  keyOf = d: tryOr "" (if builtins.isAttrs d && d ? drvPath
    then builtins.unsafeDiscardStringContext d.drvPath else "");
  tryOr = default: v: let t = builtins.tryEval v; in if t.success then t.value else default;
  isDerivation = v: tryOr false (builtins.isAttrs v && (v.type or null) == "derivation");
  isInterpreter = v: tryOr false (isDerivation v && v ? withPackages && builtins.isString v.drvPath);
  ownOr = own: fallback: if isInterpreter own then own else fallback;
  # language -> the interpreter whose module the package `v` of the set `set` says it is.
  markedBy = {
    python = v: set: let i = v.pythonModule or null; in
      if isInterpreter i && (!(set ? python) || keyOf set.python == keyOf i) then i else null;
    perl = v: set: if v ? perlModule then ownOr v.perlModule (set.perl or null) else null;
    lua = v: set: if v ? luaModule then ownOr v.luaModule (set.lua or null) else null;
    ruby = v: set: if (v.isRubyGem or false) == true then v.ruby or null else null;
    ghc = v: set: if (v.isHaskellLibrary or false) == true then set.ghc or null else null;
  };
  inSet = r: builtins.length r.path >= 2 && tryOr false (builtins.isAttrs r.parent)
    && !(isDerivation r.parent);
  interpreterOf = r:
    let
      found = builtins.filter (x: isInterpreter x.drv) (map (language: {
        inherit language;
        drv = tryOr null (markedBy.${language} r.value r.parent);
      }) interpreterNames);
      first = builtins.head found;
    in if !(inSet r) || found == [ ] then null else first // { key = keyOf first.drv; };
  ok = builtins.filter (r: r.ok) resolved;
  members = builtins.filter (r: r.interpreter != null)
    (map (r: r // { interpreter = interpreterOf r; }) ok);
  interpreters = builtins.attrValues (builtins.listToAttrs (map (r: {
    name = r.interpreter.key; value = r.interpreter;
  }) members));
  # A top-level package that is an environment's interpreter (python3 beside
  # python3Packages.requests) is that environment.
  environmentOf = r:
    let
      own = interpreterOf r;
      key = if own != null then own.key else keyOf r.value;
    in if builtins.any (i: i.key == key) interpreters then key else null;
  # A top-level interpreter outside every environment (python312 beside python3Packages.*):
  # one whose own set (`pkgs`) names it as its interpreter.
  loose = builtins.concatMap (r:
    let
      v = r.value;
      key = keyOf v;
      languages = builtins.filter (n: keyOf (v.pkgs.${n} or null) == key) interpreterNames;
    in if builtins.length r.path != 1 || environmentOf r != null || !(isInterpreter v)
        || !(tryOr false (builtins.isAttrs (v.pkgs or null))) || languages == [ ] then [ ]
      else [ { language = builtins.head languages; drv = v; inherit key; names = [ r.name ]; } ])
    ok;
  # Two interpreters of one language in one image, one of them an environment's: each would
  # put its `python3` on PATH.
  conflicts = builtins.filter (l: builtins.length l > 1 && builtins.any (i: !(i ? names)) l)
    (map (language: builtins.filter (i: i.language == language) (interpreters ++ loose))
      interpreterNames);
  namesOf = i: i.names or (map (r: r.name) (builtins.filter (r: environmentOf r == i.key) ok));
  environments = map (i:
    let
      inside = builtins.filter (r: (interpreterOf r).key or null == i.key) ok;
      env = i.drv.withPackages (_: map (r: r.value) inside);
    in {
      inherit (i) key;
      inherit env;
      info = {
        language = i.language;
        interpreter = i.drv.name;
        members = namesOf i;
        contents = map (r: r.value.outPath) inside;
        # The packages themselves, should the environment leave one out (runner.py).
        packages = map (r: { inherit (r) name; drvPath = r.value.drvPath; out = r.value.outPath;
                             mainProgram = programOf r.value; }) inside;
        drvPath = env.drvPath;
        out = env.outPath;
        mainProgram = programOf env;
      };
    }) interpreters;
  programOf = d: let m = tryOr null (d.meta.mainProgram or null);
    in if builtins.isString m then m else null;
  # Packages of nested sets (not of derivations' passthru) that are no interpreter's modules.
  plain = map (r: r.name) (builtins.filter (r: inSet r
    && interpreterOf r == null && environmentOf r == null) ok);
  entryOf = r:
    let key = environmentOf r;
        e = builtins.head (builtins.filter (e: e.key == key) environments);
    in if key == null then {
      inherit (r) name;
      attrPath = r.path;
      drvPath = r.value.drvPath;
      out = r.value.outPath;
      mainProgram = programOf r.value;
    } else {
      inherit (r) name;
      attrPath = r.path;
      inherit (e.info) drvPath out;
      mainProgram = programOf r.value;
    };

  # Runtime inputs worth describing; nixpkgs names them so, the demo set `deps`.
  inputsOf = d: builtins.filter (x: builtins.isAttrs x && (x.type or null) == "derivation")
    (builtins.concatLists (map (a: let v = d.${a} or [ ]; in if builtins.isList v then v else [ ])
      [ "buildInputs" "propagatedBuildInputs" "deps" ]));
  drvKey = d: let k = builtins.tryEval d.drvPath; in if k.success then k.value else "";
  derivations = builtins.genericClosure {
    startSet = map (d: { key = drvKey d; drv = d; })
      (map (r: r.value) resolved ++ map (e: e.env) environments);
    operator = item: map (d: { key = drvKey d; drv = d; })
      (let i = builtins.tryEval (inputsOf item.drv); in if i.success then i.value else [ ]);
  };
  firstString = v: if builtins.isString v then v
    else if builtins.isList v && v != [ ] && builtins.isString (builtins.head v) then builtins.head v
    else "";
  licenseOf = l: if builtins.isString l then { name = l; }
    else if builtins.isAttrs l && l ? spdxId then { id = l.spdxId; }
    else if builtins.isAttrs l then { name = l.shortName or l.fullName or ""; }
    else { name = ""; };
  describe = d: output:
    let
      meta = d.meta or { };
      parsed = builtins.parseDrvName (d.name or "");
      license = meta.license or [ ];
      entry = {
        path = d.${output}.outPath;
        pname = d.pname or parsed.name;
        version = d.version or parsed.version;
        description = firstString (meta.description or "");
        homepage = firstString (meta.homepage or "");
        licenses = map licenseOf (if builtins.isList license then license else [ license ]);
      };
      tried = builtins.tryEval (builtins.deepSeq entry entry);
    in if tried.success then [ tried.value ] else [ ];
  metaOf = item:
    let outputs = builtins.tryEval (item.drv.outputs or [ "out" ]);
    in if item.key == "" || !outputs.success then [ ]
      else builtins.concatLists (map (describe item.drv) outputs.value);

  minverFile = (if isFlake then flake.outPath else srcPath) + "/lib/minver.nix";
  minver = if builtins.pathExists minverFile then import minverFile else null;
  tooOld = minver != null && builtins.compareVersions minver builtins.nixVersion > 0;

  # Only names are read: no package is evaluated (an alias may abort, which tryEval does
  # not catch), only the sets whose names say they hold packages.
  nestedNames = n:
    let isSet = builtins.tryEval (builtins.isAttrs pkgs.${n} && (pkgs.${n}.type or null) != "derivation");
    in if builtins.match ".*Packages(_.*)?" n != null && isSet.success && isSet.value
       then map (m: "${n}.${m}") (builtins.attrNames pkgs.${n})
       else [ ];
  topNames = builtins.attrNames pkgs;

  # Step 1 of a flake. Its inputs are those of `inputs` and the arguments of `outputs`,
  # as Nix takes them; only the root's entries of the lock are compared here, Nix itself
  # refuses any other change the lock would need.
  flakeFile = import (srcPath + "/flake.nix");
  lockFile = srcPath + "/flake.lock";
  lock = builtins.fromJSON (builtins.readFile lockFile);
  hasLock = builtins.pathExists lockFile;
  declared = builtins.attrNames ((flakeFile.inputs or { })
    // removeAttrs (builtins.functionArgs flakeFile.outputs) [ "self" ]);
  pinned = if hasLock then builtins.attrNames (lock.nodes.${lock.root}.inputs or { }) else [ ];
in
{
  flakeSource = {
    source = "${builtins.path {
      path = srcPath;
      name = "source";
      filter = p: t: baseNameOf p != ".git";
    }}";
    prepare = "${builtins.path { path = ./.; name = "source"; }}";
    inherit hasLock;
    unpinned = builtins.filter (n: !builtins.elem n pinned) declared;
  };

  names = if tooOld then [ ] else topNames ++ builtins.concatLists (map nestedNames topNames);

  plan = if tooOld then {
    nixTooOld = { required = minver; running = builtins.nixVersion; };
  } else {
    inherit missing absent;
  } // (if missing != [ ] then { packages = [ ]; } else if conflicts != [ ] then {
    packages = [ ];
    conflicts = map (l: map (i: { interpreter = i.drv.name; names = namesOf i; }) l) conflicts;
  } else {
    packages = map entryOf resolved;
    environments = map (e: e.info) environments;
    inherit plain;
    meta = builtins.concatLists (map metaOf derivations);
  });
}
