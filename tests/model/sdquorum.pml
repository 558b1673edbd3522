/* A bounded model of sdquorum's custody protocol, checked exhaustively by spin (tests/model/test_spin_model.py).

   Two variants, selected at compile time:
     (default)  TODAY: the protocol as main implemented it before issue 13: an Azure restore binds no
                destination in the statement the custodian verifies, agents approve it by default,
                agents remember no epoch, and the node compares a lost key by certificate bytes.
     -DFIXED    the protocol DESIGN.md describes: the statement binds the destination key and the
                custodian is shown it; an Azure restore needs the agent's opt-in and is refused for a
                domain the node holds and for an sdquorum payload; agents remember the highest epoch
                per domain and refuse a lower one; a lost key is compared by public key (SPKI).

   The world, and how each element maps to the code
   ------------------------------------------------
   domain      one native domain D, n = 3 custodians, m = 2 (sdquorum/sdfile.py seal_domain). Activated
               at epoch 1 on node N1 with wrapping keys W1, W2, W3 in slots 1..3. C3's key W3 has gone
               missing: C3's agent no longer answers, and whoever found W3 holds C3's power.
   rotation    once, to epoch 2 (coordinator/rotation.py RotationSession + the node's re-seal): W3 is
               recorded lost and leaves; slot 3 goes to a new custodian C4 (W4) -- or, when the admin
               is the adversary, to W3 again under a freshly self-signed certificate (issue 13 class 3):
               TODAY's node compares certificate bytes and takes it, FIXED compares SPKI and refuses.
               It needs m approvals of non-lost epoch-1 custodians, so C1 and C2 both approve (each
               signs a proof of possession; coordinator/rotation.py): they see epoch 2.
   nodes       N1 holds D (ACTIVATED). N2 is a new node, attested under the root (a real HSM), fresh:
               it can recover once (hsm_node InitRecovery -> coordinator/recovery.py RecoverySession).
               Keys K_N1 and K_N2 stand for the ephemeral X25519 exchange keys those nodes attest
               (coordinator/ceremony.py Ceremony._open, sdquorum/envelopes.py ExchangeStatement).
   sessions    at most MAXS ceremony sessions, each one record s[t]:
                 REC   native recovery on N2 with an SD file of epoch ep (any file the operators still
                       have, retired ones included: the review only lists them for destruction).
                       Shares are sealed to N2's attested exchange key: dest = K_N2, shown.
                 AZ    Azure restore (coordinator/azure.py AzureRestoreSession) of the Azure file that
                       `sdctl sd-file --format azure` exported from N1 at epoch ep. Shares are sealed to
                       the node's attested key, and the result is wrapped to an exchange certificate
                       the initiator chose: dest = K_ADV. TODAY: not in the statement (shown = false).
                 FAKE  a "session" of a node certificate without the attestation key: the statement is
                       not signed under the attestation root (sdquorum/envelopes.py verify_attestation
                       refuses it), dest = K_ADV.
   releases    rel/acc bit x of a session: slot x's share was released into it / accepted by it.
               An honest agent (custodian_agent, sdquorum/envelopes.py check_request, make_release)
               releases at most once per session. The set of releases made is the network pool: the
               adversary delivers any of them to any session any number of times, in any order
               (replay, reorder, duplicate), and signs releases of its own for any slot, x = 0
               included (forge). The coordinator's checks (open_release: session binding, slot key,
               epoch, x; Ceremony.submit: settled slot, duplicate) decide, in `deliver`.
   adversary   one role for the whole run, chosen nondeterministically:
                 R_ADMIN     starts ceremonies, exports the Azure file, picks the Azure exchange
                             certificate (its own, K_ADV) and the rotation roster;
                 R_APP       no ceremony call; a network adversary only;
                 R_NODECERT  runs a node without the attestation key (FAKE sessions);
                 R_CUST      custodian C1 (its key W1, its share in each epoch);
                 R_LOST      the holder of C3's lost key W3.
               Operators are honest but may start a recovery with any SD file they hold; honest
               custodians approve whatever passes their agent's checks (the worst human), so what is
               proved is what the machine checks enforce, whatever `approval` is set to.

   Invariants (each an assertion, selectable with -DCHECK_DEST / -DCHECK_EPOCH / -DCHECK_LOST = 0|1)
   ----------
     inv_dest   the domain secret or a share only ever reaches a key that the releasing custodians
                were shown and that is attested under the root (and the adversary never holds m
                shares of an epoch, nor the secret).                          -- issue 13 class 1
     inv_epoch  an epoch never goes back: no node completes a recovery counting a release made for
                an epoch the domain had already left.                          -- issue 13 class 2
     inv_lost   a key recorded lost never counts again: no ceremony completes counting a release
                its key made after the record, and no roster adopted after it holds that key
                (compared by key, not certificate).                            -- issue 13 classes 2, 3
   Each of FIXED's four defences can be switched off alone (-DFIXED -DDEF_EPOCH=0 ...): DEF_DEST
   (the Azure destination is in the statement and shown), DEF_AZURE (Azure restore: agent opt-in,
   refused for a domain the node holds and for an sdquorum payload), DEF_EPOCH (agents remember the
   highest epoch), DEF_SPKI (lost keys compared by public key). Without DEF_AZURE, DEF_EPOCH or
   DEF_SPKI spin finds class 1, 2 or 3 again. Without DEF_DEST alone it finds nothing here: every
   Azure file in this world is an export of the native domain, which DEF_AZURE refuses; binding the
   destination is what protects a genuine Azure domain, which is outside this model.
   Operators do not rotate a domain while a recovery of it is open on another node (the rotation
   waits for rec_open to clear). -DINFLIGHT=1 drops that assumption, and spin then finds, even on
   FIXED, the residual the fix leaves: one honest release made before the rotation plus one made after
   it by the lost key's holder (or a colluding custodian) complete the retired epoch on N2; no agent
   refuses, since each was asked while the epoch was current. The session deadline bounds the window.
   -DGOAL=1 (resp. 2) asserts that no recovery of epoch 2 (resp. no rotation) ever completes: spin
   must refute it, which shows the FIXED model is not safe merely because nothing can happen.

   Not modelled: the compromise flag, drills (no share leaves an agent), pools, offline request
   files (the same request and release), the timing of deadlines (a session simply may never end).
*/

#ifndef CHECK_DEST
#define CHECK_DEST 1
#endif
#ifndef CHECK_EPOCH
#define CHECK_EPOCH 1
#endif
#ifndef CHECK_LOST
#define CHECK_LOST 1
#endif
#ifndef GOAL
#define GOAL 0
#endif
#ifndef INFLIGHT
#define INFLIGHT 0
#endif
/* FIXED's four defences, each on unless switched off (-DFIXED -DDEF_EPOCH=0: FIXED without it) */
#ifdef FIXED
#define DEF_ON 1
#else
#define DEF_ON 0
#endif
#ifndef DEF_DEST
#define DEF_DEST DEF_ON     /* the statement binds the Azure destination; the custodian sees it */
#endif
#ifndef DEF_AZURE
#define DEF_AZURE DEF_ON    /* Azure restore: agent opt-in, refused for a held domain / an sdquorum payload */
#endif
#ifndef DEF_EPOCH
#define DEF_EPOCH DEF_ON    /* agents remember the highest epoch per domain and refuse lower */
#endif
#ifndef DEF_SPKI
#define DEF_SPKI DEF_ON     /* a lost key is compared by public key (SPKI), not certificate bytes */
#endif

#define M 2
#define N 3
#define MAXS 3

#define REC 1
#define AZ 2
#define FAKE 3

#define N1 1
#define N2 2

#define K_N1 1
#define K_N2 2
#define K_ADV 3
#define attested(k) ((k) == K_N1 || (k) == K_N2)

#define R_ADMIN 1
#define R_APP 2
#define R_NODECERT 3
#define R_CUST 4
#define R_LOST 5

#define bit(x) (1 << (x))
#define count(b) ((((b) >> 1) & 1) + (((b) >> 2) & 1) + (((b) >> 3) & 1))

byte role;
byte dom_epoch = 1;     /* the domain's current epoch (N1's) */
bool lost3 = false;     /* W3 recorded lost (at the rotation) */
byte r2_3 = 0;          /* key in slot 3 of epoch 2: 4 (W4), or 3 (W3 under a new certificate) */
byte n2_epoch = 0;      /* epoch N2 recovered, 0 = none */
byte az_ep = 0;         /* epoch of the Azure export, 0 = none */
byte advkey = 0;        /* wrapping key the adversary holds: 1 (R_CUST), 3 (R_LOST), 0 */
byte hi[5];             /* DEF_EPOCH: highest epoch agent i has seen for D */
bool optin[5];          /* DEF_AZURE: agent i's configuration serves Azure restores */
bool adv_secret = false;
byte adv_shares[3];     /* epoch -> bitmask of x whose share the adversary can read */

typedef Sess {
    byte kind;
    byte node;
    byte ep;
    byte dest;
    bool shown;         /* dest is in the statement the custodians verify */
    byte rel;           /* slots released into this session (the network pool) */
    byte acc;           /* slots the coordinator accepted */
    byte stale;         /* releases made when ep was already retired */
    byte lostrel;       /* releases made by a key already recorded lost */
    bool done
};
Sess s[MAXS];
byte ns = 0;
bool rec_open = false;  /* N2 runs one recovery session at a time */
/* scratch for one atomic step, always assigned before use: not part of the state vector */
hidden byte st, st2, ag, sx, sy, se, sk, hk;

/* the wrapping key holding slot x in epoch e */
#define roster(e, x) (((e) == 2 && (x) == 3) -> r2_3 : (x))
/* the slot key k holds in epoch e, 0 = none */
#define slot_of(k, e) (((k) == 1 || (k) == 2) -> (k) : ((roster(e, 3) == (k)) -> 3 : 0))
#define honest(i) ((i) != 3 && (i) != advkey)
#define session_key(ts) ((s[ts].kind == FAKE) -> K_ADV : ((s[ts].node == N1) -> K_N1 : K_N2))

#if CHECK_DEST
#define inv_dest(c, what) if :: !(c) -> printf(what); assert(c) :: else -> skip fi
#else
#define inv_dest(c, what) skip
#endif
#if CHECK_EPOCH
#define inv_epoch(c, what) if :: !(c) -> printf(what); assert(c) :: else -> skip fi
#else
#define inv_epoch(c, what) skip
#endif
#if CHECK_LOST
#define inv_lost(c, what) if :: !(c) -> printf(what); assert(c) :: else -> skip fi
#else
#define inv_lost(c, what) skip
#endif

inline new_session(knd, nd, ep0, d, sh) {
    s[ns].kind = knd; s[ns].node = nd; s[ns].ep = ep0; s[ns].dest = d; s[ns].shown = sh;
    ns++
}

/* a release of slot x's share into session t (sealed to its exchange key, signed by x's key) */
inline released(tr, rx) {
    s[tr].rel = s[tr].rel | bit(rx);
    if :: s[tr].ep < dom_epoch -> s[tr].stale = s[tr].stale | bit(rx) :: else -> skip fi;
    hk = roster(s[tr].ep, rx);
    if :: lost3 && hk == 3 -> s[tr].lostrel = s[tr].lostrel | bit(rx) :: else -> skip fi;
    hk = session_key(tr);
    if  /* sealed to the adversary's key: it reads the share */
    :: hk == K_ADV -> adv_shares[s[tr].ep] = adv_shares[s[tr].ep] | bit(rx)
    :: else -> skip
    fi
}

inline complete(tc) {
    s[tc].done = true;
    if
    :: s[tc].kind == REC ->
        printf("MSC: N2 completes recovery at epoch %d (domain at epoch %d), slots %d\n", s[tc].ep, dom_epoch, s[tc].acc);
        inv_epoch((s[tc].acc & s[tc].stale) == 0, "VIOLATION inv_epoch: a recovery completed from releases for a retired epoch\n");
        inv_lost((s[tc].acc & s[tc].lostrel) == 0, "VIOLATION inv_lost: a recovery counted a share of a key recorded lost\n");
        n2_epoch = s[tc].ep;
        rec_open = false;
#if GOAL == 1
        assert(s[tc].ep != 2)
#endif
    :: s[tc].kind == AZ ->
        printf("MSC: Azure restore completes: transfer file wrapped to key %d, shown=%d\n", s[tc].dest, s[tc].shown);
        inv_lost((s[tc].acc & s[tc].lostrel) == 0, "VIOLATION inv_lost: an Azure restore counted a share of a key recorded lost\n");
        inv_dest(s[tc].shown && attested(s[tc].dest), "VIOLATION inv_dest: the domain went to a key neither shown nor attested\n");
        adv_secret = (s[tc].dest == K_ADV)
    :: else -> skip
    fi
}

/* the coordinator receives, for session t2, a release of slot y bound to session src, signed by key k */
inline deliver(td, src, yd, kd) {
    hk = roster(s[td].ep, yd);
    if
    :: s[td].done || yd < 1 || yd > N || (s[td].acc & bit(yd)) != 0 -> skip  /* finished, x = 0 or > n, settled */
    :: else ->
        if
        :: src == td && kd == hk && (s[td].rel & bit(yd)) != 0 ->
            s[td].acc = s[td].acc | bit(yd);
            if :: count(s[td].acc) >= M -> complete(td) :: else -> skip fi
        :: else -> skip  /* bound to another session, signed by another key, or never released */
        fi
    fi
}


active proctype secrecy() {  /* monitor: the adversary never holds the secret or m shares of an epoch */
#if CHECK_DEST
end:
    atomic {
        (adv_secret || count(adv_shares[1]) >= M || count(adv_shares[2]) >= M) ->
        printf("VIOLATION inv_dest: the adversary holds the domain secret or m shares\n");
        assert(false)
    }
#endif
    skip
}

active proctype world() {

    if
    :: role = R_ADMIN
    :: role = R_APP
    :: role = R_NODECERT
    :: role = R_CUST; advkey = 1
    :: role = R_LOST; advkey = 3
    fi;
    printf("MSC: adversary role %d\n", role);
    if :: advkey != 0 -> adv_shares[1] = bit(slot_of(advkey, 1)) :: else -> skip fi;
#if DEF_EPOCH
    hi[1] = 1; hi[2] = 1;  /* activation carries the epoch to every agent */
#endif
#if DEF_AZURE
    if :: optin[1] = true :: skip fi;
    if :: optin[2] = true :: skip fi;
    if :: optin[4] = true :: skip fi;
#endif

end:
    do
    :: atomic {  /* an operator starts a native recovery on N2 with an SD file of any epoch so far */
        ns < MAXS && n2_epoch == 0 && !rec_open ->
        rec_open = true;
        select(se : 1 .. dom_epoch);
        printf("MSC: recovery on N2 with the epoch-%d SD file\n", se);
        new_session(REC, N2, se, K_N2, true)
    }
    :: atomic {  /* the node certificate holder runs a node without the attestation key */
        role == R_NODECERT && ns < MAXS ->
        printf("MSC: unattested session to the adversary's key\n");
        new_session(FAKE, N2, dom_epoch, K_ADV, true)
    }
    :: atomic {  /* an admin exports the domain as an Azure file (sdctl sd-file --format azure) */
        az_ep != dom_epoch ->
        printf("MSC: Azure-format export at epoch %d\n", dom_epoch);
        az_ep = dom_epoch
    }
    :: atomic {  /* the admin starts an Azure restore to an exchange certificate of its own making */
        role == R_ADMIN && az_ep != 0 && ns < MAXS ->
        if :: sk = N1 :: sk = N2 fi;
#if DEF_AZURE
        if
        :: sk == N1 || n2_epoch != 0 -> printf("MSC: node %d refuses an Azure restore of a domain it holds\n", sk)
        :: else ->
            printf("MSC: Azure restore on node %d, destination shown=%d\n", sk, DEF_DEST);
            new_session(AZ, sk, az_ep, K_ADV, DEF_DEST)
        fi
#else
        printf("MSC: Azure restore on node %d, destination shown=%d\n", sk, DEF_DEST);
        new_session(AZ, sk, az_ep, K_ADV, DEF_DEST)
#endif
    }
    :: atomic {  /* an honest agent answers a request */
        ns > 0 ->
        select(st : 0 .. ns - 1);
        if :: ag = 1 :: ag = 2 :: ag = 4 fi;
        sx = slot_of(ag, s[st].ep);
        if
        :: !honest(ag) || s[st].done || sx == 0 || (s[st].rel & bit(sx)) != 0 -> skip  /* nothing to answer */
        :: else -> if
        :: s[st].kind == FAKE -> printf("MSC: agent %d refuses: attestation not under the root\n", ag)
#if DEF_EPOCH
        :: s[st].kind != FAKE && s[st].ep < hi[ag] ->
            printf("MSC: agent %d refuses epoch %d: it has seen epoch %d\n", ag, s[st].ep, hi[ag])
#endif
#if DEF_AZURE
        :: s[st].kind == AZ && s[st].ep >= hi[ag] ->
            /* every Azure file in this world is an export of the native domain D */
            printf("MSC: agent %d refuses the Azure restore (opt-in %d): an sdquorum payload\n", ag, optin[ag])
        :: s[st].kind == REC && s[st].ep >= hi[ag] ->
#else
        :: s[st].kind != FAKE && s[st].ep >= hi[ag] ->
#endif
            hk = session_key(st);  /* the shares go to the attested node; an Azure result then to dest */
            inv_dest(attested(hk), "VIOLATION inv_dest: a share released to an unattested key\n");
#if DEF_EPOCH
            hi[ag] = s[st].ep;
#endif
            printf("MSC: agent %d releases slot %d of epoch %d into session %d (kind %d)\n", ag, sx, s[st].ep, st, s[st].kind);
            released(st, sx)
        fi fi
    }
    :: atomic {  /* the adversary custodian releases its own share into any session */
        advkey != 0 && ns > 0 ->
        select(st : 0 .. ns - 1);
        sx = slot_of(advkey, s[st].ep);
        if
        :: sx != 0 && !s[st].done && (s[st].rel & bit(sx)) == 0 ->
            printf("MSC: adversary releases its slot %d of epoch %d into session %d\n", sx, s[st].ep, st);
            released(st, sx)
        :: else -> skip
        fi
    }
    :: atomic {  /* the network: deliver any release made so far to any session (replay, reorder, duplicate) */
        ns > 0 ->
        select(st : 0 .. ns - 1);
        select(st2 : 0 .. ns - 1);
        select(sy : 1 .. N);
        if
        :: (s[st].rel & bit(sy)) != 0 && !s[st2].done ->
            printf("MSC: deliver slot %d's release from session %d to session %d\n", sy, st, st2);
            sk = roster(s[st].ep, sy);
            deliver(st2, st, sy, sk)
        :: else -> skip
        fi
    }
    :: atomic {  /* the adversary signs a release of its own for any slot (sx = 0 included) of any session */
        advkey != 0 && ns > 0 ->
        select(st2 : 0 .. ns - 1);
        select(sy : 0 .. N);
        printf("MSC: adversary signs a release for slot %d of session %d\n", sy, st2);
        deliver(st2, st2, sy, advkey)
    }
    :: atomic {  /* a session ends without completing (deadline, cancel, quorum unreachable) */
        ns > 0 ->
        select(st : 0 .. ns - 1);
        if
        :: !s[st].done ->
            printf("MSC: session %d ends without completing\n", st);
            s[st].done = true;
            if :: s[st].kind == REC -> rec_open = false :: else -> skip fi
        :: else -> skip
        fi
    }
    :: atomic {  /* the rotation to epoch 2, which records W3 lost */
        dom_epoch == 1 && (!rec_open || INFLIGHT) ->
        if :: sk = 4 :: role == R_ADMIN -> sk = 3 fi;
#if DEF_SPKI
        if
        :: sk == 3 -> printf("MSC: rotation refused: slot 3's public key is recorded lost\n")
        :: else ->
#else
        if
        :: true ->
#endif
            printf("MSC: rotation to epoch 2 (slot 3 -> key %d), W3 recorded lost\n", sk);
            dom_epoch = 2; lost3 = true; r2_3 = sk;
            inv_lost(r2_3 != 3, "VIOLATION inv_lost: the rotation adopted a key recorded lost\n");
#if DEF_EPOCH
            hi[1] = 2; hi[2] = 2; hi[4] = 2;  /* the approvers and the new custodian see epoch 2 */
#endif
            hk = slot_of(advkey, 2);
            if :: advkey != 0 && hk != 0 -> adv_shares[2] = bit(hk) :: else -> skip fi;
#if GOAL == 2
            assert(false);
#endif
            skip
        fi
    }
    od
}
