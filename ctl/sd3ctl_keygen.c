/*  sd3ctl_keygen - `sd3ctl keygen -o NAME [--force]`: a CurveZMQ key pair for sd3d
 *
 *  Writes NAME.key (the secret, mode 0600) and NAME.pub, and prints the public key. A
 *  node's allow file is the .pub files of the peers it admits: `cat a.pub b.pub > allow`.
 *  Refuses to overwrite an existing NAME.key without --force.  */
#include "sd3_curve.h"
#include "sd3ctl.h"

#include <stdio.h>
#include <string.h>

static void
s_usage(FILE *out)
{
    fprintf(out, "usage: sd3ctl keygen -o NAME [--force]\n"
                 "  writes NAME.key (secret, mode 0600) and NAME.pub (Z85 public key)\n");
}

int
sd3ctl_keygen(int argc, char **argv)
{
    const char *name = NULL;
    bool force = false;
    for (int i = 1; i < argc; i++) {
        if ((!strcmp(argv[i], "-o") || !strcmp(argv[i], "--output")) && i + 1 < argc) {
            name = argv[++i];
        } else if (!strcmp(argv[i], "--force")) {
            force = true;
        } else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            s_usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "sd3ctl keygen: unknown argument '%s'\n", argv[i]);
            s_usage(stderr);
            return 2;
        }
    }
    if (!name || !*name) {
        s_usage(stderr);
        return 2;
    }
    sd3_curve_keypair_t kp;
    sd3_err_t err = {0};
    if (sd3_curve_keypair_new(&kp, &err) != 0 || sd3_curve_keypair_save(&kp, name, force, &err)) {
        fprintf(stderr, "sd3ctl keygen: %s\n", err.msg);
        memset(&kp, 0, sizeof kp);
        return 2;
    }
    printf("%s\n", kp.public_key);
    fprintf(stderr, "sd3ctl keygen: wrote %s.key (secret, 0600) and %s.pub\n", name, name);
    memset(&kp, 0, sizeof kp);
    return 0;
}
