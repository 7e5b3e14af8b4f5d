# An offline, nixpkgs-shaped package set for testing the registry without
# nixpkgs or a binary cache. Everything is built from the host's static
# busybox, so it evaluates and builds on a bare machine with only Nix.
#
#   import ./. { system = "x86_64-linux"; }
#
# Builds are deterministic: no timestamps, no randomness; the only host
# inputs are the busybox binary (/usr/bin or /bin), the CA bundle (cacert) and /etc/{services,protocols}
# (iana-etc).
# A flake, whose pure evaluation reads no host path, passes the directory holding
# busybox as `bootstrap` (a locked input); the store paths are the same.
{ system ? builtins.currentSystem, bootstrap ? null, ... }:

let
  # Host files are imported by content; a missing one should be an obvious
  # evaluation error for the package that needs it, not a confusing build error.
  hostFile = path: what:
    if builtins.pathExists path
    then builtins.path { inherit path; name = baseNameOf (toString path); }
    else throw "demo-pkgs: ${what} needs the host file ${toString path}, which does not exist";

  # The directory holding the host's busybox binary. It must be a real
  # directory: builtins.path copies a symlinked /bin (merged /usr) as a
  # dangling symlink, so the /usr directories come first. The busybox entry
  # must be a regular file for the same reason. Under restricted evaluation
  # (as the registry evaluates) a directory it may not read does not exist.
  hasBusybox = d: builtins.pathExists (d + "/busybox")
    && ((builtins.readDir d).busybox or null) == "regular";
  bootDirs = builtins.filter hasBusybox [ /usr/bin /usr/local/bin /bin /usr/sbin /sbin ];
  bootDir =
    if bootstrap != null then bootstrap
    else if bootDirs != [ ] then builtins.head bootDirs
    else throw ("demo-pkgs: needs a static busybox binary in /usr/bin, /usr/local/bin or /bin"
      + " (and, evaluated by the registry, that directory in NIXERY_EVAL_ALLOW)");

  # Only the busybox binary is copied, so the store path depends on its
  # content alone. The basename must stay `busybox` because busybox picks
  # its applet from argv[0].
  boot = builtins.path {
    path = bootDir;
    name = "bootstrap-busybox";
    filter = p: t: baseNameOf p == "busybox";
  };

  # Every derivation below (except busybox itself) runs busybox's ash with
  # all applets on PATH.
  mkDrv = { name, script, ... }@attrs:
    derivation ((removeAttrs attrs [ "script" "meta" ]) // {
      inherit name system;
      builder = "${busybox}/bin/sh";
      args = [ "-e" "-c" script ];
      PATH = "${busybox}/bin";
    }) // { meta = attrs.meta or { }; };

  # Writes each attribute of `scripts` to $out/bin/<name> (executable). The
  # texts travel as environment variables so no shell quoting is involved.
  mkScripts = { name, scripts, extra ? "", meta ? { } }:
    mkDrv ({
      inherit name meta;
      scriptNames = builtins.attrNames scripts;
      script = ''
        mkdir -p "$out/bin"
        for n in $scriptNames; do
          eval "printf '%s' \"\$script_$n\"" > "$out/bin/$n"
          chmod 0555 "$out/bin/$n"
        done
      '' + extra;
    } // builtins.listToAttrs (map (n: {
      name = "script_${n}";
      value = scripts.${n};
    }) (builtins.attrNames scripts)));

  # A stand-in for a real package: a runnable bin/<pname>, the store paths
  # of its dependencies (so Nix records them as references and
  # `nix-store -qR` shows the chains), and `size` KiB of payload that
  # compresses like a real binary: chunks of the busybox binary, each
  # behind a per-package, per-chunk header so no two packages are identical.
  # gzip's 32 KiB window cannot exploit the ~2 MB repeats.
  mkPkg = { pname, version, deps ? [ ], size ? 64, aliases ? [ ]
          , payloadDir ? "lib", payloadName ? "lib${pname}.so"
          , description ? "demo stand-in for ${pname}", extra ? "", meta ? { }, env ? { } }:
    mkDrv (env // {
      name = "${pname}-${version}";
      inherit pname version deps aliases payloadDir payloadName;
      size = size * 1024;
      bb = "${busybox}/bin/busybox";
      shell = "${busybox}/bin/sh";
      meta = { inherit description; } // meta;
      script = ''
        mkdir -p "$out/bin" "$out/nix-support" "$out/$payloadDir" "$out/share/doc/$pname"

        : > "$out/nix-support/propagated-deps"
        for d in $deps; do echo "$d" >> "$out/nix-support/propagated-deps"; done

        bbsize=$(wc -c < "$bb")
        left=$size
        i=0
        while [ "$left" -gt 0 ]; do
          i=$((i + 1))
          n=$left
          if [ "$n" -gt "$bbsize" ]; then n=$bbsize; fi
          f="$out/$payloadDir/$payloadName.$i"
          printf '## demo-pkgs payload: %s-%s part %d (%d bytes) ##\n' "$pname" "$version" "$i" "$n" > "$f"
          head -c "$n" "$bb" >> "$f"
          left=$((left - n))
        done

        # The script checks its dependencies are present, so running it
        # inside an image tests that the image carries the whole closure.
        {
          echo "#!$shell"
          echo "# $pname $version (demo-pkgs)"
          echo "for d in $deps; do"
          echo "  [ -e \"\$d\" ] || { echo \"$pname: missing dependency \$d\" >&2; exit 1; }"
          echo "done"
          echo "echo '$pname $version'"
        } > "$out/bin/$pname"
        chmod 0555 "$out/bin/$pname"
        for a in $aliases; do ln -s "$pname" "$out/bin/$a"; done

        printf '%s %s\nA generated stand-in package from demo-pkgs.\n' "$pname" "$version" \
          > "$out/share/doc/$pname/README"
      '' + extra;
    });

  # A stand-in interpreter: mkPkg's package whose bin/<pname> is the script in ./stand-ins,
  # which answers imports from its environment, and a library directory of its own.
  mkInterpreter = { pname, libDir, stdlib, ... }@args: mkPkg ((removeAttrs args [ "libDir" "stdlib" ]) // {
    env = { standIn = ./stand-ins + "/${pname}.sh"; inherit libDir stdlib; };
    extra = ''
      mkdir -p "$out/$libDir"
      for m in $stdlib; do echo "# demo-pkgs stand-in" > "$out/$libDir/$m"; done
      rm -f "$out/bin/$pname"
      sed -e "s|@out@|$out|g" -e "s|@shell@|$shell|g" -e "s|@deps@|$deps|g" \
        -e "s|@libDir@|$libDir|g" -e "s|@version@|$version|g" "$standIn" > "$out/bin/$pname"
      chmod 0555 "$out/bin/$pname"
    '';
  });

  # The modules a list of packages needs, theirs included: nixpkgs' requiredPythonModules,
  # which, like it, keeps only the packages that `isModule` (nixpkgs' hasPythonModule).
  requiredModules = attr: isModule: drvs: map (x: x.drv) (builtins.genericClosure {
    startSet = map (d: { key = d.outPath; drv = d; }) (builtins.filter isModule drvs);
    operator = item: map (d: { key = d.outPath; drv = d; }) (item.drv.${attr} or [ ]);
  });

  # An interpreter's environment, shaped like nixpkgs' `withPackages`: one store path whose
  # bin/ holds the interpreter's wrapper (`setup` says what it sets before running the
  # interpreter) and the modules' programs; `link` is what else of each module it links.
  mkEnv = { interpreter, modules, programs, setup, link ? "" }: mkDrv {
    name = "${interpreter.name}-env";
    inherit modules programs setup link;
    deps = modules;  # read by prepare-image, for the SBOM's meta
    real = "${interpreter}/bin/${interpreter.pname}";
    shell = "${busybox}/bin/sh";
    meta = interpreter.meta // { description = "${interpreter.pname} with its packages"; };
    script = ''
      mkdir -p "$out/bin"
      for m in $modules; do
        if [ -d "$m/bin" ]; then
          for f in "$m"/bin/*; do
            if [ ! -e "$out/bin/$(basename "$f")" ]; then ln -s "$f" "$out/bin/"; fi
          done
        fi
        eval "$link"
      done
      for n in $programs; do
        rm -f "$out/bin/$n"
        printf '#!%s\n%s\nexec %s "$@"\n' "$shell" "$(eval "echo \"$setup\"")" "$real" > "$out/bin/$n"
        chmod 0555 "$out/bin/$n"
      done
    '';
  };

  # A python interpreter and its set, as nixpkgs shapes them: python.pkgs is the set, the
  # set's `python` is the interpreter, python.withPackages makes an environment.
  mkPython = { version, size, deps, stdlib, pkgs }:
    let
      short = builtins.concatStringsSep "." (builtins.genList
        (i: builtins.elemAt (builtins.splitVersion version) i) 2);
      sitePackages = "lib/python${short}/site-packages";
      python = mkInterpreter {
        pname = "python3"; inherit version size deps stdlib;
        aliases = [ "python" "python${short}" ];
        payloadName = "libpython${short}.so";
        libDir = "lib/python${short}";
        meta.mainProgram = "python3";
      } // {
        inherit pkgs sitePackages;
        pythonVersion = short;
        withPackages = f: mkEnv {
          interpreter = python;
          modules = requiredModules "propagatedPythonModules"
            (d: (d.pythonModule.outPath or null) == python.outPath) (f pkgs);
          programs = [ "python3" "python" "python${short}" ];
          setup = "export NIX_PYTHONPREFIX=$out";
          link = ''
            mkdir -p "$out/${sitePackages}"
            for f in "$m"/${sitePackages}/*; do
              if [ -e "$f" ]; then ln -sf "$f" "$out/${sitePackages}/"; fi
            done
          '';
        };
      };
    in python;

  # A package of a python set: a module directory in the interpreter's site-packages.
  mkPy = python: { pname, version, size, deps ? [ ], mod ? pname, meta ? { } }: (mkPkg {
    inherit pname version size meta;
    deps = [ python ] ++ deps;
    payloadDir = "${python.sitePackages}/${mod}";
    payloadName = "_${mod}.cpython-311-x86_64-linux-gnu.so";
    extra = ''
      printf '__version__ = "%s"\n' "$version" > "$out/$payloadDir/__init__.py"
    '';
  }) // { pythonModule = python; propagatedPythonModules = deps; };

  busybox = derivation {
    name = "busybox-1.35.0";
    inherit system;
    builder = "${boot}/busybox";
    args = [ "sh" "-e" "-c" ''
      b=${boot}/busybox
      $b mkdir -p "$out/bin"
      $b cp "$b" "$out/bin/busybox"
      cd "$out/bin"
      set -f  # applet names include `[` and `[[`
      # Relative symlinks: argv[0]'s basename selects the applet.
      for a in $($b --list); do
        if [ "$a" != busybox ]; then $b ln -s busybox "$a"; fi
      done
    '' ];
  } // { meta.description = "the host's static busybox with applet symlinks"; };

  # GNU coreutils program names; only those busybox implements are linked.
  coreutilsNames = [
    "[" "arch" "base32" "base64" "basename" "cat" "chgrp" "chmod" "chown"
    "chroot" "cksum" "comm" "cp" "csplit" "cut" "date" "dd" "df" "dirname"
    "du" "echo" "env" "expand" "expr" "factor" "false" "fold" "groups" "head"
    "hostid" "id" "install" "join" "link" "ln" "logname" "ls" "md5sum"
    "mkdir" "mkfifo" "mknod" "mktemp" "mv" "nice" "nl" "nohup" "nproc" "od"
    "paste" "printenv" "printf" "pwd" "readlink" "realpath" "rm" "rmdir"
    "seq" "sha1sum" "sha256sum" "sha512sum" "shred" "shuf" "sleep" "sort"
    "split" "stat" "stty" "sum" "sync" "tac" "tail" "tee" "test" "timeout"
    "touch" "tr" "true" "truncate" "tsort" "tty" "uname" "unexpand" "uniq"
    "unlink" "users" "wc" "who" "whoami" "yes"
  ];

  self = rec {
    inherit busybox;

    # bash is really busybox ash; enough for `bash -c` and an interactive shell.
    bashInteractive = mkScripts {
      name = "bash-interactive-5.2-p15";
      meta.description = "bash and sh that run busybox ash";
      scripts = {
        bash = ''
          #!${busybox}/bin/sh
          exec ${busybox}/bin/sh "$@"
        '';
      };
      extra = ''ln -s bash "$out/bin/sh"'';
    };

    coreutils = mkDrv {
      name = "coreutils-9.3";
      names = coreutilsNames;
      bb = "${busybox}/bin/busybox";
      meta.description = "GNU coreutils names as symlinks to busybox";
      script = ''
        set -f  # the name list contains `[`
        mkdir -p "$out/bin"
        "$bb" --list > applets
        for n in $names; do
          if grep -qxF -- "$n" applets; then ln -s "$bb" "$out/bin/$n"; fi
        done
        # Images link /usr/bin/env to this package; refuse to build without it.
        [ -L "$out/bin/env" ]
      '';
    };

    moreutils = mkScripts {
      name = "moreutils-0.67";
      meta.description = "sponge, ts, chronic and ifne as busybox sh scripts";
      scripts = {
        sponge = ''
          #!${busybox}/bin/sh
          # sponge [-a] [FILE]: soak up stdin, then write it out.
          PATH=${busybox}/bin:$PATH
          append=
          if [ "$1" = -a ]; then append=1; shift; fi
          tmp=$(mktemp) || exit 1
          cat > "$tmp"
          if [ $# -eq 0 ]; then cat "$tmp"
          elif [ -n "$append" ]; then cat "$tmp" >> "$1"
          else cat "$tmp" > "$1"
          fi
          rc=$?
          rm -f "$tmp"
          exit $rc
        '';
        ts = ''
          #!${busybox}/bin/sh
          # ts [FORMAT]: prefix each input line with a timestamp.
          PATH=${busybox}/bin:$PATH
          fmt=''${1:-%b %d %H:%M:%S}
          while IFS= read -r line || [ -n "$line" ]; do
            printf '%s %s\n' "$(date +"$fmt")" "$line"
          done
        '';
        chronic = ''
          #!${busybox}/bin/sh
          # chronic CMD...: show CMD's output only if it fails.
          PATH=${busybox}/bin:$PATH
          out=$(mktemp) || exit 1
          "$@" > "$out" 2>&1
          rc=$?
          if [ $rc -ne 0 ]; then cat "$out"; fi
          rm -f "$out"
          exit $rc
        '';
        ifne = ''
          #!${busybox}/bin/sh
          # ifne CMD...: run CMD with stdin only if stdin is not empty.
          PATH=${busybox}/bin:$PATH
          if IFS= read -r first || [ -n "$first" ]; then
            { printf '%s\n' "$first"; cat; } | "$@"
          fi
        '';
      };
    };

    nano = mkScripts {
      name = "nano-7.2";
      meta.description = "nano that runs busybox vi";
      scripts.nano = ''
        #!${busybox}/bin/sh
        exec ${busybox}/bin/vi "$@"
      '';
    };

    hello = mkScripts {
      name = "hello-2.12.1";
      meta.description = "prints Hello, world! like GNU hello";
      scripts.hello = ''
        #!${busybox}/bin/sh
        # Referencing glibc, like the real hello, gives it a shared dependency.
        # glibc: ${glibc}
        case "$1" in
          --version|-v) echo "hello (GNU Hello) 2.12.1" ;;
          --help|-h) echo "Usage: hello [-g TEXT | --greeting=TEXT]" ;;
          -g) echo "$2" ;;
          --greeting=*) echo "''${1#--greeting=}" ;;
          *) echo "Hello, world!" ;;
        esac
      '';
      extra = ''
        mkdir -p "$out/share/man/man1"
        cat > "$out/share/man/man1/hello.1" <<'EOF'
        .TH HELLO 1 "2022" "hello 2.12.1" "User Commands"
        .SH NAME
        hello \- friendly greeting program
        .SH SYNOPSIS
        .B hello
        [\fB\-g\fR \fITEXT\fR]
        .SH DESCRIPTION
        Print "Hello, world!" or the given greeting.
        EOF
      '';
    };

    cacert = mkDrv {
      name = "nss-cacert-3.92";
      src = hostFile /etc/ssl/certs/ca-certificates.crt "cacert";
      meta.description = "the host's CA bundle";
      script = ''
        mkdir -p "$out/etc/ssl/certs"
        cp "$src" "$out/etc/ssl/certs/ca-bundle.crt"
        ln -s ca-bundle.crt "$out/etc/ssl/certs/ca-certificates.crt"
      '';
    };

    iana-etc = mkDrv {
      name = "iana-etc-20230316";
      services = hostFile /etc/services "iana-etc";
      protocols = hostFile /etc/protocols "iana-etc";
      meta.description = "the host's /etc/services and /etc/protocols";
      script = ''
        mkdir -p "$out/etc"
        cp "$services" "$out/etc/services"
        cp "$protocols" "$out/etc/protocols"
      '';
    };

    # Generated packages with shared dependency chains. Sizes in KiB.
    glibc = mkPkg { pname = "glibc"; version = "2.37-8"; size = 8192; aliases = [ "ldd" "locale" "getconf" ]; payloadName = "libc.so"; };
    zlib = mkPkg { pname = "zlib"; version = "1.3"; size = 120; deps = [ glibc ]; payloadName = "libz.so"; };
    libffi = mkPkg { pname = "libffi"; version = "3.4.4"; size = 100; deps = [ glibc ]; };
    expat = mkPkg { pname = "expat"; version = "2.5.0"; size = 300; deps = [ glibc ]; aliases = [ "xmlwf" ]; };
    ncurses = mkPkg { pname = "ncurses"; version = "6.4"; size = 2500; deps = [ glibc ]; aliases = [ "tput" "clear" ]; };
    readline = mkPkg { pname = "readline"; version = "8.2p1"; size = 500; deps = [ ncurses ]; };
    pcre2 = mkPkg { pname = "pcre2"; version = "10.42"; size = 800; deps = [ glibc ]; };
    oniguruma = mkPkg { pname = "oniguruma"; version = "6.9.8"; size = 600; deps = [ glibc ]; };
    openssl = mkPkg { pname = "openssl"; version = "3.0.10"; size = 5000; deps = [ glibc ]; payloadName = "libcrypto.so"; };
    curl = mkPkg { pname = "curl"; version = "8.3.0"; size = 1200; deps = [ openssl zlib glibc ]; };
    # Interpreters with nixpkgs' passthru: `withPackages`, their package set as `pkgs`, and
    # that set naming its interpreter (`perlPackages.perl`, `python3Packages.python`).
    perl = mkInterpreter {
      pname = "perl"; version = "5.38.0"; size = 6000; deps = [ glibc zlib ]; aliases = [ "perl5.38.0" ];
      libDir = "lib/perl5/5.38.0"; stdlib = [ "strict.pm" "warnings.pm" ];
      meta.mainProgram = "perl";
    } // {
      pkgs = perlPackages;
      withPackages = f: mkEnv {
        interpreter = perl;
        modules = requiredModules "propagatedPerlModules" (d: d ? perlModule) (f perlPackages);
        programs = [ "perl" "perl5.38.0" ];
        setup = "export PERL5LIB=$perl5lib";
        link = ''perl5lib="''${perl5lib:+$perl5lib:}$m/lib/perl5/site_perl/5.38.0"'';
      };
    };
    perlPackages = let
      mkPerl = { pname, version, module, size, deps ? [ ] }: mkPkg {
        inherit pname version size;
        deps = [ perl ] ++ deps;
        payloadDir = "lib/perl5/site_perl/5.38.0/auto/${builtins.replaceStrings [ "::" ] [ "/" ] module}";
        env.pm = "lib/perl5/site_perl/5.38.0/${builtins.replaceStrings [ "::" ] [ "/" ] module}.pm";
        env.module = module;
        extra = ''
          mkdir -p "$(dirname "$out/$pm")"
          printf 'package %s;\nour $VERSION = "%s";\n1;\n' "$module" "$version" > "$out/$pm"
        '';
      } // { perlModule = perl; propagatedPerlModules = deps; };
    in rec {
      inherit perl;
      TryTiny = mkPerl { pname = "Try-Tiny"; version = "0.31"; module = "Try::Tiny"; size = 40; };
      URI = mkPerl { pname = "URI"; version = "5.21"; module = "URI"; size = 120; };
      JSON = mkPerl { pname = "JSON"; version = "4.10"; module = "JSON"; size = 90; deps = [ URI ]; };
    };
    git = mkPkg { pname = "git"; version = "2.42.0"; size = 8000; deps = [ curl openssl zlib perl expat pcre2 glibc ]; };
    gitMinimal = mkPkg { pname = "git-minimal"; version = "2.42.0"; size = 5000; deps = [ curl openssl zlib expat glibc ]; aliases = [ "git" ]; };
    python3 = mkPython {
      version = "3.11.5"; size = 15000;
      deps = [ glibc openssl zlib ncurses readline libffi expat ];
      stdlib = [ "os.py" "json.py" "ssl.py" "re.py" ];
      pkgs = python3Packages;
    };
    # A second python, so that an image asking for both (a 422) can be tested; never built.
    python312 = mkPython {
      version = "3.12.0"; size = 300; deps = [ glibc ]; stdlib = [ "os.py" ];
      pkgs = python312Packages;
    };
    python312Packages = {
      python = python312;
      six = mkPy python312 { pname = "six"; version = "1.16.0"; size = 40; };
    };
    htop = mkPkg { pname = "htop"; version = "3.2.2"; size = 300; deps = [ ncurses ]; };
    vim = mkPkg { pname = "vim"; version = "9.0.1897"; size = 3500; deps = [ ncurses glibc ]; aliases = [ "vi" "xxd" ]; };
    # Declares its main program, as nixpkgs' jq does: an image of jq alone runs it.
    jq = mkPkg { pname = "jq"; version = "1.7"; size = 400; deps = [ oniguruma glibc ]; meta.mainProgram = "jq"; };
    # A locale archive, as nixpkgs' glibcLocales has: images with it get LANG and LC_ALL.
    glibcLocales = mkDrv {
      name = "glibc-locales-2.37-8";
      meta.description = "a stand-in lib/locale/locale-archive";
      script = ''
        mkdir -p "$out/lib/locale"
        echo "demo-pkgs locale archive" > "$out/lib/locale/locale-archive"
      '';
    };
    ripgrep = mkPkg { pname = "ripgrep"; version = "13.0.0"; size = 4500; deps = [ pcre2 glibc ]; aliases = [ "rg" ]; };

    # A statically linked tool: no glibc, only busybox (via the shebang).
    # The attribute starts with `_` because Nix names cannot start with a digit.
    _1password = mkPkg {
      pname = "1password"; version = "2.21.0"; size = 2500;
      aliases = [ "op" ];
      description = "digit-leading name, exposed as _1password";
    };

    # A nested set (not itself a derivation), like nixpkgs' python3Packages.
    python3Packages = let mkPy3 = mkPy python3;
    in rec {
      python = python3;
      certifi = mkPy3 { pname = "certifi"; version = "2023.7.22"; size = 300; };
      idna = mkPy3 { pname = "idna"; version = "3.4"; size = 250; };
      urllib3 = mkPy3 { pname = "urllib3"; version = "2.0.4"; size = 900; };
      charset-normalizer = mkPy3 { pname = "charset-normalizer"; version = "3.2.0"; size = 400; mod = "charset_normalizer"; };
      requests = mkPy3 { pname = "requests"; version = "2.31.0"; size = 400; deps = [ certifi idna urllib3 charset-normalizer ]; };
      numpy = mkPy3 { pname = "numpy"; version = "1.25.2"; size = 5000; deps = [ zlib ]; };
      # A module with a program of its own, as nixpkgs' black: a name of it alone runs that.
      black = mkPy3 { pname = "black"; version = "23.9.1"; size = 60; meta.mainProgram = "black"; };
      # An application in the set, as nixpkgs' toPythonApplication makes (`pythonModule` false):
      # no module, so it stays a plain package.
      httpie = mkPy3 { pname = "httpie"; version = "3.2.2"; size = 60; } // { pythonModule = false; };
    };

    # A whole package set inside the set, as nixpkgs' pkgsStatic or pkgsMusl: it holds
    # interpreters, yet its packages are no interpreter's modules.
    pkgsAlt = { inherit hello perl python3; };

    # A derivation whose passthru names an interpreter, as nixpkgs' nodejs (`nodejs.python`),
    # and a derivation of its own (nixpkgs' nodejs has a `libv8` output).
    nodejs = mkPkg { pname = "nodejs"; version = "20.8.0"; size = 60; deps = [ glibc ]; } // {
      python = python3;
      libv8 = mkPkg { pname = "libv8"; version = "11.3"; size = 60; deps = [ glibc ]; };
    };

    # A nested set that names no interpreter with `withPackages`, as nixpkgs' nodePackages:
    # its packages stay plain.
    nodePackages = {
      prettier = mkPkg { pname = "prettier"; version = "3.0.3"; size = 60; deps = [ glibc ]; };
    };

    # Fails at build time with a clear message.
    broken = mkDrv {
      name = "broken-1.0";
      meta.description = "build always fails";
      script = ''
        echo "error: broken is broken on purpose" >&2
        exit 1
      '';
    };

    # Fails after printing markup: the registry's pages must show a log as text.
    markup = mkDrv {
      name = "markup-1.0";
      meta.description = "build prints a <script> tag and fails";
      script = ''
        echo "markup: <script>document.title='pwned'</script> & <b>not bold</b>" >&2
        exit 1
      '';
    };

    # Its closure holds a source imported by content (the host's /etc/services), the same
    # store path for every system, as architecture-independent data is in nixpkgs.
    servicesdb = mkDrv {
      name = "servicesdb-1.0";
      services = hostFile /etc/services "servicesdb";
      meta.description = "a link to an architecture-independent store path";
      script = ''
        mkdir -p "$out/share"
        ln -s "$services" "$out/share/services"
      '';
    };

    # Builds for x86_64-linux only, like a package whose upstream has no arm64 port: a
    # multi-platform image of it fails, naming the platform.
    x86only = mkDrv {
      name = "x86only-1.0";
      meta.description = "build fails for any system but x86_64-linux";
      script = ''
        if [ "$system" != x86_64-linux ]; then
          echo "error: x86only does not build for $system" >&2
          exit 1
        fi
        mkdir -p "$out/bin"
      '';
    };

    # Fails at evaluation time.
    throwing = throw "throwing: this package refuses to evaluate";

    # Builds for ten minutes, to trip build timeouts, and then fails: a build a test left
    # running (its registry killed, its Nix not) never puts it in the store, where it would
    # stop being slow for every later test on the machine.
    slow = mkDrv {
      name = "slow-1.0";
      meta.description = "build sleeps 600 s, then fails";
      script = ''
        echo "slow: sleeping 600 seconds" >&2
        sleep 600
        exit 1
      '';
    };
  };
in
self
