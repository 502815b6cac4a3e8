package milterpeers

import (
	"fmt"
	"os"
	"path/filepath"
)

// EICARSignature is the name of the local body signature that matches
// the EICAR test string. ClamAV reports it with ".UNOFFICIAL" appended,
// as for every signature outside its official databases.
const EICARSignature = "Local.EICAR.Test.String"

// clamSignatures: a body pattern (any file type, any offset) that also
// matches the EICAR string followed by a newline, and the MD5 of the
// exact 68-byte file, which does not.
var clamSignatures = map[string]string{
	"local-eicar.ndb": EICARSignature + ":0:*:" + fmt.Sprintf("%x", EICAR) + "\n",
	"local-eicar.hdb": "44d88612fea8a8f36de82e1278abb02f:68:Local.EICAR.Test.File.MD5\n",
}

func startClamav(clamdBin, milterBin string) (*Instance, error) {
	return launch("milterpeers-clamav-", "clamav", func(in *Instance, uid, gid int) error {
		return setupClamav(in, uid, gid, clamdBin, milterBin)
	})
}

func setupClamav(in *Instance, uid, gid int, clamdBin, milterBin string) error {
	dir := in.Dir
	db, tmp := filepath.Join(dir, "db"), filepath.Join(dir, "tmp")
	if err := mkdirs(uid, gid, db, tmp); err != nil {
		return err
	}
	// clamd refuses to start with an empty database folder.
	files := map[string]string{}
	for name, sig := range clamSignatures {
		files["db/"+name] = sig
	}
	userLine := ""
	if os.Geteuid() == 0 && uid != 0 {
		userLine = "User clamav\n"
	}
	sock := filepath.Join(tmp, "clamd.sock")
	files["clamd.conf"] = userLine + "LocalSocket " + sock + "\nFixStaleSocket yes\nForeground yes\n" +
		"DatabaseDirectory " + db + "\nTemporaryDirectory " + tmp + "\n" +
		"LogFile " + filepath.Join(tmp, "clamd.log") + "\nLogTime yes\nLogVerbose yes\nLogClean yes\n" +
		"Bytecode no\nScanMail yes\nScanArchive yes\nExtendedDetectionInfo yes\n" +
		"StreamMaxLength 25M\nMaxFileSize 25M\n"
	// A Unix socket, as for rspamd: no port another process could take.
	milterSock := filepath.Join(tmp, "milter.sock")
	// RejectMsg puts the virus name into the reply; OnFail Defer answers
	// TEMPFAIL when clamd cannot be reached.
	files["clamav-milter.conf"] = userLine + "MilterSocket unix:" + milterSock + "\nMilterSocketMode 666\nFixStaleSocket yes\nForeground yes\n" +
		"ClamdSocket unix:" + sock + "\nTemporaryDirectory " + tmp + "\n" +
		"LogFile " + filepath.Join(tmp, "milter.log") + "\nLogTime yes\nLogVerbose yes\n" +
		"OnClean Accept\nOnInfected Reject\nOnFail Defer\nRejectMsg \"Virus found: %v\"\n" +
		"AddHeader Replace\nLogInfected Full\nLogClean Full\nMaxFileSize 25M\nReadTimeout 120\n"
	if err := writeFiles(dir, files); err != nil {
		return err
	}

	if err := in.run("clamd", filepath.Join(tmp, "clamd.log"), dialable("unix", sock),
		clamdBin, "--config-file="+filepath.Join(dir, "clamd.conf")); err != nil {
		return err
	}
	if err := in.run("clamav-milter", filepath.Join(tmp, "milter.log"), dialable("unix", milterSock),
		milterBin, "--config-file="+filepath.Join(dir, "clamav-milter.conf")); err != nil {
		return err
	}
	in.Addr = "unix:" + milterSock
	return nil
}
