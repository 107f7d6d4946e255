# flash_emu.py - host emulation of k_attention_d64 (stages/cuda/sd3_cuda_attention.cu), lane by lane
#
# Rebuilds every mma.m16n8k16 and ldmatrix.x4.trans from the per-lane registers with the
# fragment layouts of the PTX ISA, runs the kernel's index, mask and online-softmax logic as
# written in the .cu, and compares with naive attention using the tolerance of
# tests/gpu/test_attention.c. No GPU needed (pure Python, ~10 s): it checks the kernel's
# logic, not the hardware. Keep it in step with the kernel.   usage: python3 tests/gpu/flash_emu.py
import math, random
random.seed(1)
def bf(x):  # round to bf16 (RNE) as a float
    import struct
    b = struct.unpack('<I', struct.pack('<f', x))[0]
    b = (b + 0x7fff + ((b >> 16) & 1)) >> 16
    return struct.unpack('<f', struct.pack('<I', b << 16))[0]
# fragment layouts (g = lane>>2, t = lane&3)
def a_coords(lane):   # 4 regs x 2 halves -> (row, col) of 16x16 A
    g, t = lane >> 2, lane & 3
    return [[(g, 2*t), (g, 2*t+1)], [(g+8, 2*t), (g+8, 2*t+1)],
            [(g, 2*t+8), (g, 2*t+9)], [(g+8, 2*t+8), (g+8, 2*t+9)]]
def b_coords(lane):   # 2 regs x 2 halves -> (k, n) of 16x8 B
    g, t = lane >> 2, lane & 3
    return [[(2*t, g), (2*t+1, g)], [(2*t+8, g), (2*t+9, g)]]
def c_coords(lane):   # 4 floats -> (row, col) of 16x8 C
    g, t = lane >> 2, lane & 3
    return [(g, 2*t), (g, 2*t+1), (g+8, 2*t), (g+8, 2*t+1)]
def mma(C, A, B):     # C[lane][4], A[lane][4][2], B[lane][2][2] (values already bf16)
    Am = [[0]*16 for _ in range(16)]; Bm = [[0]*8 for _ in range(16)]; Cm = [[0]*8 for _ in range(16)]
    for l in range(32):
        for r in range(4):
            for h in range(2):
                i, j = a_coords(l)[r][h]; Am[i][j] = A[l][r][h]
        for r in range(2):
            for h in range(2):
                k, n = b_coords(l)[r][h]; Bm[k][n] = B[l][r][h]
        for e in range(4):
            i, j = c_coords(l)[e]; Cm[i][j] = C[l][e]
    for l in range(32):
        for e in range(4):
            i, j = c_coords(l)[e]
            C[l][e] = Cm[i][j] + sum(Am[i][k] * Bm[k][j] for k in range(16))
def ldsm_x4_trans(smem, addr):  # addr[lane] = (row, col) of the lane's row start
    out = [[None]*4 for _ in range(32)]
    for m in range(4):
        rows = [addr[m*8 + r] for r in range(8)]
        M = [[smem[rows[r][0]][rows[r][1] + c] for c in range(8)] for r in range(8)]
        for l in range(32):
            g, t = l >> 2, l & 3
            out[l][m] = (M[2*t][g], M[2*t+1][g])   # .trans: rows 2t,2t+1 of column g
    return out

def kernel(q, k, v, B, H, Lq, Lk, scale, causal, bias):
    D = 64; o = [[[0.0]*(H*D) for _ in range(Lq)] for _ in range(B)]
    L2E = 1.4426950408889634; sl = scale * L2E
    for b in range(B):
        for h in range(H):
            for q0 in range(0, Lq, 64):
                sQ = [[q[b][q0+r][h*D+c] if q0+r < Lq else 0.0 for c in range(D)] for r in range(64)]
                for w in range(4):
                    qa = [[None]*4 for _ in range(32)]
                    for l in range(32):
                        g, t = l >> 2, l & 3
                        for kk in range(4):
                            r0, r1, c = w*16+g, w*16+g+8, kk*16+t*2
                            qa[l][kk] = [(sQ[r0][c], sQ[r0][c+1]), (sQ[r1][c], sQ[r1][c+1]),
                                         (sQ[r0][c+8], sQ[r0][c+9]), (sQ[r1][c+8], sQ[r1][c+9])]
                    acc = [[[0.0]*4 for _ in range(32)] for _ in range(8)]
                    m_run = [[-math.inf]*2 for _ in range(32)]; l_run = [[0.0]*2 for _ in range(32)]
                    kv_end = min(Lk, q0 + 64) if causal else Lk
                    for kv0 in range(0, kv_end, 64):
                        sK = [[k[b][kv0+r][h*D+c] if kv0+r < Lk else 0.0 for c in range(D)] for r in range(64)]
                        sV = [[v[b][kv0+r][h*D+c] if kv0+r < Lk else 0.0 for c in range(D)] for r in range(64)]
                        s = [[[0.0]*4 for _ in range(32)] for _ in range(8)]
                        for nt in range(8):
                            for kk in range(4):
                                Bf = []
                                for l in range(32):
                                    g, t = l >> 2, l & 3
                                    row, c = nt*8+g, kk*16+t*2
                                    Bf.append([(sK[row][c], sK[row][c+1]), (sK[row][c+8], sK[row][c+9])])
                                mma(s[nt], [qa[l][kk] for l in range(32)], Bf)
                        mx = [[-math.inf]*2 for _ in range(32)]
                        for l in range(32):
                            g, t = l >> 2, l & 3
                            row0 = q0 + w*16 + g; row1 = row0 + 8
                            for nt in range(8):
                                for e in range(4):
                                    row = row0 if e < 2 else row1; col = kv0 + nt*8 + t*2 + (e & 1)
                                    x = s[nt][l][e] * sl
                                    if bias is not None and row < Lq and col < Lk:
                                        x += bias[h][row][col] * L2E
                                    if col >= Lk or (causal and col > row): x = -math.inf
                                    s[nt][l][e] = x; mx[l][e >> 1] = max(mx[l][e >> 1], x)
                        ref = [[0]*2 for _ in range(32)]; alpha = [[0]*2 for _ in range(32)]
                        for l in range(32):   # quad shuffles: lanes l^1, l^2 share rows
                            for r in range(2):
                                quad = [mx[(l & ~3) | i][r] for i in range(4)]
                                mrow = max(quad); m_new = max(m_run[l][r], mrow)
                                ref[l][r] = 0.0 if m_new == -math.inf else m_new
                                alpha[l][r] = 2 ** (m_run[l][r] - ref[l][r]) if m_run[l][r] != -math.inf else 0.0
                                l_run[l][r] *= alpha[l][r]
                        for l in range(32):
                            for r in range(2): m_run[l][r] = max(m_run[l][r], max(mx[(l & ~3) | i][r] for i in range(4)))
                        for nt in range(8):
                            for l in range(32):
                                for e in range(4):
                                    x = s[nt][l][e]
                                    p = 0.0 if x == -math.inf else 2 ** (x - ref[l][e >> 1])
                                    s[nt][l][e] = p; l_run[l][e >> 1] += p
                                acc[nt][l][0] *= alpha[l][0]; acc[nt][l][1] *= alpha[l][0]
                                acc[nt][l][2] *= alpha[l][1]; acc[nt][l][3] *= alpha[l][1]
                        for kk in range(4):
                            pa = [[(bf(s[2*kk][l][0]), bf(s[2*kk][l][1])), (bf(s[2*kk][l][2]), bf(s[2*kk][l][3])),
                                   (bf(s[2*kk+1][l][0]), bf(s[2*kk+1][l][1])), (bf(s[2*kk+1][l][2]), bf(s[2*kk+1][l][3]))]
                                  for l in range(32)]
                            for dp in range(4):
                                addr = [(kk*16 + (l & 7) + ((l >> 3) & 1)*8, dp*16 + (l >> 4)*8) for l in range(32)]
                                vb4 = ldsm_x4_trans(sV, addr)
                                mma(acc[2*dp], pa, [[vb4[l][0], vb4[l][1]] for l in range(32)])
                                mma(acc[2*dp+1], pa, [[vb4[l][2], vb4[l][3]] for l in range(32)])
                    for l in range(32):
                        g, t = l >> 2, l & 3
                        row0 = q0 + w*16 + g; row1 = row0 + 8
                        inv = []
                        for r in range(2):
                            tot = sum(l_run[(l & ~3) | i][r] for i in range(4))
                            inv.append(1.0/tot if tot > 0 else 0.0)
                        for nt in range(8):
                            dim = nt*8 + t*2
                            if row0 < Lq:
                                o[b][row0][h*D+dim] = acc[nt][l][0]*inv[0]; o[b][row0][h*D+dim+1] = acc[nt][l][1]*inv[0]
                            if row1 < Lq:
                                o[b][row1][h*D+dim] = acc[nt][l][2]*inv[1]; o[b][row1][h*D+dim+1] = acc[nt][l][3]*inv[1]
    return o

def naive(q, k, v, B, H, Lq, Lk, scale, causal, bias):
    D = 64; o = [[[0.0]*(H*D) for _ in range(Lq)] for _ in range(B)]
    for b in range(B):
        for h in range(H):
            for i in range(Lq):
                sc = []
                for j in range(Lk):
                    x = scale * sum(q[b][i][h*D+d]*k[b][j][h*D+d] for d in range(D))
                    if bias is not None: x += bias[h][i][j]
                    if causal and j > i: x = -math.inf
                    sc.append(x)
                m = max(sc); e = [math.exp(x - m) if x != -math.inf else 0.0 for x in sc]; s = sum(e)
                for d in range(D):
                    o[b][i][h*D+d] = sum(e[j]*v[b][j][h*D+d] for j in range(Lk)) / s
    return o

def run(B, H, Lq, Lk, causal, use_bias, scale=0.125):
    R = lambda n1, n2, sc: [[bf(sc*random.uniform(-1, 1)) for _ in range(n2)] for _ in range(n1)]
    q = [R(Lq, H*64, 3.0) for _ in range(B)]; k = [R(Lk, H*64, 1.0) for _ in range(B)]; v = [R(Lk, H*64, 1.0) for _ in range(B)]
    bias = [R(Lq, Lk, 4.0) for _ in range(H)] if use_bias else None
    got = kernel(q, k, v, B, H, Lq, Lk, scale, causal, bias); ref = naive(q, k, v, B, H, Lq, Lk, scale, causal, bias)
    G = [bf(got[b][i][c]) for b in range(B) for i in range(Lq) for c in range(H*64)]
    F = [ref[b][i][c] for b in range(B) for i in range(Lq) for c in range(H*64)]
    rms = math.sqrt(sum(x*x for x in F)/len(F)); tol = 2**-7
    ratio = max(abs(g-f)/(tol*rms + tol*abs(f) + 1e-7) for g, f in zip(G, F))
    nmse = sum((g-f)**2 for g, f in zip(G, F))/sum(f*f for f in F)
    print(f"  test metric: worst ratio {ratio:.3f} (pass < 1), nmse {nmse:.3g} (pass < 5e-5)")
    if not (ratio < 1 and nmse < 5e-5):
        FAILED.append((B, H, Lq, Lk))
    err = max(abs(got[b][i][c] - ref[b][i][c]) for b in range(B) for i in range(Lq) for c in range(H*64))
    mag = max(abs(ref[b][i][c]) for b in range(B) for i in range(Lq) for c in range(H*64))
    print(f"B={B} H={H} Lq={Lq} Lk={Lk} causal={causal} bias={use_bias}: max_err={err:.4g} max|ref|={mag:.3g}", "ok" if err < 2e-2*max(mag,1e-3) else "FAIL")
FAILED = []
run(1, 1, 70, 70, False, False)
run(1, 1, 70, 130, False, True)
run(1, 1, 77, 77, True, False)
run(1, 1, 130, 100, True, True)
import sys
sys.exit(1 if FAILED else 0)
