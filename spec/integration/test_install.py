"""Install and package: `cmake --install` into a staging directory (DESTDIR,
--prefix /usr as a package has it), the embedding example built against the
staged tree through pkg-config (shared and static) and run; the systemd
units checked by `systemd-analyze verify`; `cpack -G DEB` and
`dpkg-deb -c` on the package. Steps whose tool is missing are skipped with
a message.
"""
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import unittest

BUILD = os.path.abspath(os.environ.get("DCM_BUILD_DIR", "build"))
SRC = os.environ.get("DCM_SOURCE_DIR", os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
SANITIZED = os.environ.get("DCM_SANITIZED", "0") == "1"
EXAMPLE = os.path.join(SRC, "spec", "embed", "embed_example.c")
UNITS = ("discluster-master.service", "discluster-control.service")


def read(path):
    with open(path) as f:
        return f.read()


def sh(argv, env=None, timeout=120, check=True):
    r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError("%s exited %d:\n%s%s" % (" ".join(argv), r.returncode, r.stdout,
                                                         r.stderr))
    return r


class Install(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="dcm-install-")
        cls.stage = os.path.join(cls.tmp.name, "stage")
        env = dict(os.environ, DESTDIR=cls.stage)
        sh(["cmake", "--install", BUILD, "--prefix", "/usr"], env=env)
        cls.root = os.path.join(cls.stage, "usr")
        cache = read(os.path.join(BUILD, "CMakeCache.txt"))
        cls.libdir = re.search(r"^CMAKE_INSTALL_LIBDIR:PATH=(.*)$", cache, re.M).group(1)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def path(self, *parts):
        return os.path.join(self.root, *parts)

    def test_installed_files(self):
        lib = self.path(self.libdir)
        for rel in ("bin/discluster-master", "bin/discluster-control"):
            self.assertTrue(os.access(self.path(rel), os.X_OK), rel)
        for rel in ("include/discluster/master.h",
                    "share/discluster/policies/default.lua",
                    "share/discluster/spec/helper.lua",
                    "share/discluster/spec/policy_helpers.lua",
                    "share/doc/discluster/examples/master.lua",
                    "share/doc/discluster/examples/master.env",
                    "share/doc/discluster/examples/control.env",
                    "lib/systemd/system/discluster-master.service",
                    "lib/systemd/system/discluster-control.service"):
            self.assertTrue(os.path.isfile(self.path(rel)), rel)
        self.assertTrue(os.path.isfile(os.path.join(lib, "libdiscluster.a")))
        self.assertTrue(os.path.isfile(os.path.join(lib, "pkgconfig", "discluster.pc")))
        # the shared library: a soname, its links, and only the public API
        real = os.path.realpath(os.path.join(lib, "libdiscluster.so"))
        self.assertRegex(os.path.basename(real), r"^libdiscluster\.so\.\d+\.\d+\.\d+$")
        soname = re.search(r"SONAME.*\[(.*)\]", sh(["readelf", "-d", real]).stdout).group(1)
        self.assertRegex(soname, r"^libdiscluster\.so\.\d+(\.\d+)?$")
        self.assertEqual(os.path.realpath(os.path.join(lib, soname)), real)
        syms = set(re.findall(r"\b(dcm\w+)@@", sh(["nm", "-D", "--defined-only", real]).stdout))
        header = read(self.path("include", "discluster", "master.h"))
        self.assertEqual(syms, set(re.findall(r"\b(dcm_[a-z_]+)\(", header)) - {"dcm_event_cb"})
        # files that name paths name the installed ones
        unit = read(self.path("lib/systemd/system/discluster-master.service"))
        self.assertIn("ExecStart=/usr/bin/discluster-master -c /etc/discluster/master.lua", unit)
        self.assertIn("ExecReload=/bin/kill -HUP $MAINPID", unit)
        unit = read(self.path("lib/systemd/system/discluster-control.service"))
        self.assertIn("ExecStart=/usr/bin/discluster-control $DISCLUSTER_CONTROL_OPTS", unit)
        self.assertIn("EnvironmentFile=/etc/discluster/control.env", unit)
        pc = read(os.path.join(lib, "pkgconfig", "discluster.pc"))
        self.assertIn("prefix=/usr\n", pc)
        version = sh([self.path("bin/discluster-master"), "--version"]).stdout.split()[1]
        self.assertIn("Version: %s\n" % version, pc)

    def build_example(self, name, static):
        """Compiles embed_example.c against the staged tree into its bin/ (so the
        library finds the staged default.lua next to it)."""
        pc = shutil.which("pkg-config")
        cc = shutil.which("cc")
        if not pc or not cc:
            self.skipTest("pkg-config or cc missing: the embedding build is not checked")
        env = dict(os.environ, PKG_CONFIG_PATH=os.path.join(self.path(self.libdir), "pkgconfig"),
                   PKG_CONFIG_SYSROOT_DIR=self.stage)
        cflags = shlex.split(sh([pc, "--cflags", "discluster"], env=env).stdout)
        if static:
            libs = [x for x in shlex.split(sh([pc, "--static", "--libs", "discluster"],
                                              env=env).stdout) if x != "-ldiscluster"]
            libs.insert(0, os.path.join(self.path(self.libdir), "libdiscluster.a"))
        else:
            libs = shlex.split(sh([pc, "--libs", "discluster"], env=env).stdout)
        san = ["-fsanitize=address,undefined"] if SANITIZED else []
        out = self.path("bin", name)
        sh([cc, "-Wall", "-Werror"] + san + ["-o", out, EXAMPLE] + cflags + libs)
        return out

    def run_example(self, exe, env):
        r = sh([exe], env=env, timeout=60)
        self.assertRegex(r.stdout, r"listening on port \d+")
        self.assertIn("event stopped", r.stdout)
        # the policy came from the staged tree, found next to the program
        self.assertIn("policy: loaded %s" % os.path.realpath(
            self.path("share/discluster/policies/default.lua")), r.stderr)
        for bad in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
            self.assertNotIn(bad, r.stderr)
        return r

    def test_embedding_example_through_pkg_config_shared(self):
        exe = self.build_example("embed_shared", static=False)
        env = dict(os.environ, LD_LIBRARY_PATH=self.path(self.libdir))
        ldd = sh(["ldd", exe], env=env).stdout
        self.assertRegex(ldd, r"libdiscluster\.so\.\S+ => %s" % re.escape(self.path(self.libdir)))
        self.run_example(exe, env)

    def test_embedding_example_through_pkg_config_static(self):
        exe = self.build_example("embed_static", static=True)
        self.assertNotIn("libdiscluster", sh(["ldd", exe]).stdout)
        self.run_example(exe, dict(os.environ))

    def test_systemd_units_verify(self):
        tool = shutil.which("systemd-analyze")
        if not tool:
            self.skipTest("systemd-analyze missing: the units are not verified")
        d = os.path.join(self.tmp.name, "units")
        os.makedirs(d, exist_ok=True)
        paths = []
        for u in UNITS:
            text = read(self.path("lib/systemd/system", u))
            # verify checks that ExecStart's program exists: point at the staged one
            text = text.replace("/usr/bin/", self.path("bin") + "/")
            paths.append(os.path.join(d, u))
            with open(paths[-1], "w") as f:
                f.write(text)
        r = sh([tool, "verify"] + paths, check=False, timeout=60)
        # unknown keys and bad values are only warnings: nothing may be printed
        self.assertEqual((r.returncode, r.stdout + r.stderr), (0, ""))
        master, control = (read(p) for p in paths)
        self.assertIn("KillMode=mixed", control)  # the agent drains, then stops its clusters
        for text in (master, control):
            for opt in ("NoNewPrivileges=yes", "ProtectSystem=strict", "Restart=on-failure"):
                self.assertIn(opt, text)

    def test_debian_package(self):
        cpack, dpkg = shutil.which("cpack"), shutil.which("dpkg-deb")
        if not cpack or not dpkg:
            self.skipTest("cpack or dpkg-deb missing: no package is built")
        out = os.path.join(self.tmp.name, "pkg")
        sh([cpack, "-G", "DEB", "-B", out, "--config", os.path.join(BUILD, "CPackConfig.cmake")],
           timeout=170)
        debs = [f for f in os.listdir(out) if f.endswith(".deb")]
        self.assertEqual(len(debs), 1, os.listdir(out))
        deb = os.path.join(out, debs[0])
        listing = sh([dpkg, "-c", deb]).stdout
        files = set(re.findall(r"\s\./(\S+)", listing))
        for rel in ("usr/bin/discluster-master", "usr/bin/discluster-control",
                    "usr/include/discluster/master.h",
                    "usr/%s/libdiscluster.a" % self.libdir,
                    "usr/%s/pkgconfig/discluster.pc" % self.libdir,
                    "usr/share/discluster/policies/default.lua",
                    "usr/share/discluster/spec/policy_helpers.lua",
                    "usr/share/doc/discluster/examples/master.lua",
                    "usr/lib/systemd/system/discluster-master.service",
                    "usr/lib/systemd/system/discluster-control.service"):
            self.assertIn(rel, files, listing)
        self.assertTrue(any(re.match(r"usr/%s/libdiscluster\.so\.\d" % re.escape(self.libdir), f)
                            for f in files), listing)
        depends = sh([dpkg, "-f", deb, "Depends"]).stdout
        for p in ("libuv1", "libwslay1", "libhttp-parser2.9", "libcurl4", "liblua5.4-0",
                  "lua-cjson"):
            self.assertRegex(depends, r"(^|, )%s\b" % re.escape(p), depends)
        self.assertEqual(sh([dpkg, "-f", deb, "Package"]).stdout.strip(), "discluster")
        # what the package holds runs, and its unit names where it is
        x = os.path.join(self.tmp.name, "x")
        sh([dpkg, "-x", deb, x])
        self.assertIn("discluster-master", sh([os.path.join(x, "usr/bin/discluster-master"),
                                                "--version"]).stdout)
        unit = read(os.path.join(x, "usr/lib/systemd/system/discluster-master.service"))
        self.assertIn("ExecStart=/usr/bin/discluster-master ", unit)


if __name__ == "__main__":
    unittest.main(verbosity=2)
